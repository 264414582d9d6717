"""One trace per job, across every hop and process: the upload's trace context (W3C
traceparent in its Kafka headers) is continued by the intake, the tracker, each stage, the GPU
worker and the tracker again, as the workers export their spans over OTLP."""
from __future__ import annotations

import time
import uuid

import pytest

from tests.forms import multipart

MAKEOVER_STAGES = {"intake", "tracker", "analyze", "embed", "retrieve", "compose", "depth",
                   "render", "reanalyze"}


def test_a_makeover_is_one_trace_from_the_upload_to_its_result(e2e, room_photos):
    job_id = f"traced-{uuid.uuid4().hex[:8]}"
    trace_id = uuid.uuid4().hex  # the upstream system's trace
    upstream_span = uuid.uuid4().hex[:16]
    e2e.publish({"job_id": job_id, "pipeline": "room_makeover", "style": "modern",
                 "image": e2e.put_object("incoming/traced.jpg", room_photos[6].read_bytes())},
                key=job_id.encode(), headers=[("traceparent",
                                               f"00-{trace_id}-{upstream_span}-01".encode())])
    assert e2e.result(job_id)["status"] == "done"

    deadline = time.monotonic() + 30  # spans are exported in batches
    while True:
        spans = e2e.traces.of_trace(trace_id)
        stages = {span.name for span in spans}
        if MAKEOVER_STAGES <= stages or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert MAKEOVER_STAGES <= stages, f"stages in the trace: {sorted(stages)}"
    assert {span.service for span in spans} >= {"restyle-cpu-worker", "restyle-gpu-worker"}
    intake = next(span for span in spans if span.name == "intake")
    assert intake.parent_id == upstream_span  # the upload's own span is its parent
    by_id = {span.span_id: span for span in spans}
    for span in spans:  # every span hangs from the upstream span through restyle's own
        assert span.parent_id == upstream_span or span.parent_id in by_id, span.name
    assert all(s.attributes.get("restyle.job_id") == job_id for s in spans if s.name in
               ("analyze", "render", "reanalyze"))
    # Inside the GPU worker, where the render's time went: each step is a span of its own.
    render = next(span for span in spans if span.name == "render")
    steps = {span.name: span for span in spans if span.service == "restyle-gpu-worker"}
    assert steps["read inputs"].parent_id == render.span_id
    waited = by_id[steps["model"].parent_id]  # waiting for the model's turn, then the model
    assert waited.name == "wait for the model and render" and waited.parent_id == render.span_id
    # An earlier delivery's answer is looked for while the model renders its first step.
    look = steps["look for an earlier render"]
    assert look.parent_id == render.span_id and look.start_ms >= steps["model"].start_ms
    assert steps["store images"].parent_id == render.span_id
    # Nothing of this job escaped into another trace.
    assert {s.trace_id for s in e2e.traces.of_job(job_id)} == {trace_id}


def test_an_upload_without_a_trace_starts_one_that_follows_the_job_stage_by_stage(
        e2e, room_photos):
    """No traceparent on the upload: the intake's span starts the job's trace, and each stage's
    span is a descendant of the span of the stage that handed it the job, whether the two
    talk through a topic (Apache Kafka here: stages split) or are chained in one worker
    (Tansu: the CPU stages and the tracker at the job's ends called in-process)."""
    job_id = f"untraced-{uuid.uuid4().hex[:8]}"
    e2e.publish({"job_id": job_id, "pipeline": "room_makeover", "style": "modern",
                 "image": e2e.put_object("incoming/untraced.jpg", room_photos[6].read_bytes())},
                key=job_id.encode())
    assert e2e.result(job_id)["status"] == "done"

    deadline = time.monotonic() + 30  # spans are exported in batches
    while True:
        spans = e2e.traces.of_job(job_id)
        if MAKEOVER_STAGES <= {span.name for span in spans} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {span.trace_id for span in spans} == {spans[0].trace_id}, "one trace for the job"
    every = {span.span_id: span for span in e2e.traces.of_trace(spans[0].trace_id)}
    first = {}
    for span in sorted(every.values(), key=lambda span: span.start_ms):
        first.setdefault(span.name, span)
    assert first["intake"].parent_id == ""  # the root: nobody upstream traced it

    def ancestors(span) -> list[str]:
        names = []
        while span.parent_id in every:
            span = every[span.parent_id]
            names.append(span.name)
        return names

    handed_by = {"tracker": "intake", "embed": "analyze", "retrieve": "embed",
                 "compose": "retrieve", "depth": "compose", "render": "depth",
                 "reanalyze": "render"}
    for stage, sender in handed_by.items():
        assert sender in ancestors(first[stage]), f"{stage}: {ancestors(first[stage])}"
    last_turn = max((s for s in every.values() if s.name == "tracker"), key=lambda s: s.end_ms)
    assert "reanalyze" in ancestors(last_turn)  # the job's end, handed over by its last stage


@pytest.mark.usefixtures("first_broker_only")  # the HTTP span does not depend on the broker
def test_a_job_submitted_over_http_is_traced_from_the_request(e2e, room_photos):
    """POST /jobs is a span of the status API (continuing the caller's traceparent header),
    and the upload it publishes carries it on: the intake is the request's child."""
    trace_id, caller = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    form, headers = multipart({"room.jpg": room_photos[6].read_bytes()}, {"style": "modern"},
                              file_field="image")
    status, answer = e2e.request("POST", "/jobs", form, {
        **headers, "traceparent": f"00-{trace_id}-{caller}-01"}, tenant="traced")
    assert status == 202, answer

    deadline = time.monotonic() + 60  # the intake runs, then spans go out in batches
    while True:
        by_name = {span.name: span for span in e2e.traces.of_trace(trace_id)}
        if {"POST /jobs", "intake"} <= set(by_name) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {"POST /jobs", "intake"} <= set(by_name), f"spans: {sorted(by_name)}"
    request = by_name["POST /jobs"]
    assert request.parent_id == caller and request.service == "restyle-cpu-worker"
    assert request.attributes.get("http.status_code",
                                  request.attributes.get("http.response.status_code")) == 202
    assert by_name["intake"].parent_id == request.span_id
    assert by_name["intake"].attributes.get("restyle.job_id") == answer["job_id"]
    assert e2e.result(answer["job_id"])["status"] == "done"


@pytest.mark.usefixtures("first_broker_only")  # spans do not depend on the broker
def test_a_catalog_batch_write_is_a_span_linked_to_each_products_trace(e2e, room_photos):
    """The index writes take products in batches, each from a trace of its own: the batch is a
    span of its own, linked to the span that sent each product's message."""
    from streams.cli import catalog

    tag = uuid.uuid4().hex[:6]
    image = e2e.put_object(f"traced/{tag}.jpg", room_photos[9].read_bytes())
    traces = {}
    for n in range(2):
        trace_id = uuid.uuid4().hex
        traces[trace_id] = f"lamp-{tag}-{n}"
        e2e.publish({"product_id": traces[trace_id], "image": image, "caption": "a lamp",
                     "ingest_id": f"traced-{tag}", "ingest_total": 2}, topic="restyle.catalog",
                    headers=[("traceparent", f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
                              .encode())])
    state = catalog.wait_for_ingest(e2e.client_settings, f"traced-{tag}", 2, timeout_s=120)
    assert state.indexed == 2

    def batches_linking(trace_id: str) -> list:
        """The catalog-index spans linked to a span of trace_id, those spans received too."""
        received = {span.span_id for span in e2e.traces.of_trace(trace_id)}
        return [span for span in e2e.traces.named("catalog-index") if any(
            t == trace_id and linked in received for t, linked in span.links)]

    deadline = time.monotonic() + 30  # spans are exported in batches
    while not all(batches_linking(t) for t in traces) and time.monotonic() < deadline:
        time.sleep(0.5)
    for trace_id in traces:
        [batch] = batches_linking(trace_id)  # its product was written in one batch
        assert batch.trace_id not in traces  # a trace of its own
        assert batch.attributes["messaging.batch.message_count"] >= 1
        assert batch.service == "restyle-cpu-worker"
