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
    # Nothing of this job escaped into another trace.
    assert {s.trace_id for s in e2e.traces.of_job(job_id)} == {trace_id}


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
