"""Background replacement's contracts without Kafka: the Titan request body and its ranges, the
batch state machine and its truthful summaries, and webhook delivery against a local receiver."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from agents.background.titan import titan_batch
from schemas import ErrorCode, JobError, StageFailure
from schemas.background import (
    BatchEvent,
    BatchEventKind,
    BatchStatus,
    ImageEntry,
    ImageOutcome,
    MaskTarget,
    OutpaintMode,
    WebhookDelivery,
)
from schemas.titan import TitanRequest
from streams.adapters.storage import Storage
from streams.core.settings import Settings
from streams.tracking.batchstate import apply_batch_event, summary
from streams.tracking.webhooks import deliver, verify


def b64_png(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


PHOTO = Image.new("RGB", (96, 64), (120, 80, 40))


def titan_body(**overrides) -> dict:
    body = {"taskType": "OUTPAINTING",
            "outPaintingParams": {"text": "london city background",
                                  "negativeText": "low quality", "image": b64_png(PHOTO),
                                  "maskPrompt": "Bus", "outPaintingMode": "PRECISE"},
            "imageGenerationConfig": {"numberOfImages": 2, "quality": "premium",
                                      "height": 512, "width": 512, "cfgScale": 8.0}}
    for path, value in overrides.items():
        target = body
        *parents, leaf = path.split(".")
        for part in parents:
            target = target[part]
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return body


# --- Titan ---

@pytest.mark.parametrize("path, value, complaint", [
    ("outPaintingParams.text", "x" * 513, "at most 512"),
    ("outPaintingParams.text", None, "text"),
    ("outPaintingParams.maskImage", b64_png(Image.new("L", (96, 64))), "exactly one"),
    ("outPaintingParams.outPaintingMode", "SLOPPY", "DEFAULT"),
    ("imageGenerationConfig.numberOfImages", 6, "less than or equal to 5"),
    ("imageGenerationConfig.cfgScale", 11, "less than or equal to 10"),
    ("imageGenerationConfig.cfgScale", 1.0, "greater than or equal to 1.1"),
    ("imageGenerationConfig.seed", 2_147_483_647, "less than or equal to 2147483646"),
    ("imageGenerationConfig.quality", "ultra", "standard"),
    ("taskType", "TEXT_IMAGE", "INPAINTING"),
])
def test_titan_bodies_outside_the_documented_ranges_are_refused_with_the_field(path, value,
                                                                              complaint):
    with pytest.raises(ValidationError) as error:
        TitanRequest.model_validate(titan_body(**{path: value}))
    assert complaint in str(error.value)


def test_inpainting_params_with_an_outpainting_task_are_refused():
    body = titan_body()
    body["inPaintingParams"] = body.pop("outPaintingParams")
    del body["inPaintingParams"]["outPaintingMode"]
    with pytest.raises(ValidationError, match="needs outPaintingParams"):
        TitanRequest.model_validate(body)


def test_a_titan_outpainting_body_becomes_a_one_image_batch(tmp_path):
    settings = Settings(storage_base=tmp_path.as_uri())
    storage = Storage.from_settings(settings)
    request = TitanRequest.model_validate(titan_body())
    batch = asyncio.run(titan_batch(storage, settings, request, "t1", None, settings.results_base))
    (spec,) = batch.images
    assert spec.mask_prompt == "Bus" and spec.mask_image is None
    assert batch.prompt == "london city background" and batch.negative_prompt == "low quality"
    assert batch.mode is OutpaintMode.PRECISE and batch.mask_target is MaskTarget.KEEP
    assert batch.params.num_images == 2 and batch.params.quality.value == "premium"
    assert (batch.params.width, batch.params.height, batch.params.cfg_scale) == (512, 512, 8.0)
    stored = Image.open(io.BytesIO(asyncio.run(storage.get(spec.uri))))
    assert stored.size == PHOTO.size


def test_titan_mask_images_are_read_in_the_convention_of_their_task(tmp_path):
    """Titan: black (0,0,0) is inside the mask. Outpainting keeps the inside; inpainting
    changes it. restyle's keep-mask is white = keep."""
    settings = Settings(storage_base=tmp_path.as_uri())
    storage = Storage.from_settings(settings)
    mask = np.full((64, 96), 255, dtype=np.uint8)
    mask[10:40, 20:60] = 0  # the object, black
    encoded = b64_png(Image.fromarray(mask))
    for task, kept_inside in (("OUTPAINTING", True), ("INPAINTING", False)):
        params = {"text": "a beach", "image": b64_png(PHOTO), "maskImage": encoded}
        key = "outPaintingParams" if task == "OUTPAINTING" else "inPaintingParams"
        request = TitanRequest.model_validate({"taskType": task, key: params})
        batch = asyncio.run(titan_batch(storage, settings, request, f"m-{task}", None,
                                           settings.results_base))
        keep = np.asarray(Image.open(io.BytesIO(asyncio.run(
            storage.get(batch.images[0].mask_image)))))
        assert bool(keep[20, 30] >= 128) is kept_inside
        assert bool(keep[50, 5] >= 128) is not kept_inside


def test_a_titan_body_is_decoded_and_its_mask_encoded_off_the_event_loop(tmp_path,
                                                                          monkeypatch):
    """Up to 5 MB of image and a mask: decoded on the worker's event loop, they would hold the
    status API and every agent of the worker for as long."""
    import agents.background.titan as titan

    threads = []

    def watched(function):
        def call(*args, **kwargs):
            threads.append(threading.current_thread())
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(titan, "decode_image", watched(titan.decode_image))
    monkeypatch.setattr(titan, "encode_png", watched(titan.encode_png))
    settings = Settings(storage_base=tmp_path.as_uri())
    mask = Image.new("L", PHOTO.size, 255)
    request = TitanRequest.model_validate(titan_body(**{
        "outPaintingParams.maskPrompt": None, "outPaintingParams.maskImage": b64_png(mask)}))

    async def submit():
        batch = await titan_batch(Storage.from_settings(settings), settings, request, "t-off",
                                  None, settings.results_base)
        return batch, threading.current_thread()

    batch, loop_thread = asyncio.run(submit())
    assert batch.images[0].mask_image is not None
    assert len(threads) == 3  # the image and the mask decoded, the keep-mask encoded
    assert loop_thread not in threads


@pytest.mark.parametrize("image, code", [
    ("not base64!", ErrorCode.INVALID_PARAMS),
    (b64_png(Image.new("RGB", (1500, 64))), ErrorCode.IMAGE_TOO_LARGE),
    (b64_png(Image.new("RGB", (64, 64)), "GIF"), ErrorCode.NOT_AN_IMAGE),
    (base64.b64encode(b"plain text").decode(), ErrorCode.NOT_AN_IMAGE),
])
def test_titan_images_are_checked_as_the_api_documents(tmp_path, image, code):
    settings = Settings(storage_base=tmp_path.as_uri())
    request = TitanRequest.model_validate(titan_body(**{"outPaintingParams.image": image}))
    with pytest.raises(StageFailure) as failure:
        asyncio.run(titan_batch(Storage.from_settings(settings), settings, request, "bad", None,
                                settings.results_base))
    assert failure.value.error.code is code


def test_a_titan_mask_of_another_size_is_refused(tmp_path):
    settings = Settings(storage_base=tmp_path.as_uri())
    body = titan_body(**{"outPaintingParams.maskPrompt": None,
                         "outPaintingParams.maskImage": b64_png(Image.new("L", (10, 10)))})
    with pytest.raises(StageFailure, match="same size"):
        asyncio.run(titan_batch(Storage.from_settings(settings), settings,
                                TitanRequest.model_validate(body), "bad-mask", None,
                                settings.results_base))


# --- the batch state machine ---

def opened(total: int, tolerated=None) -> BatchEvent:
    return BatchEvent(batch_id="b", kind=BatchEventKind.OPENED, at=1.0, total=total,
                      tolerated_failure_pct=tolerated,
                      images=[ImageEntry(job_id=f"j{n}", name=f"{n}.png",
                                         image=f"s3://x/{n}.png") for n in range(total)])


def finished(job: str, ok: bool) -> BatchEvent:
    return BatchEvent(batch_id="b", kind=BatchEventKind.IMAGE, at=2.0, outcome=ImageOutcome(
        job_id=job, status="done" if ok else "failed",
        error=None if ok else "not_an_image", cause=None if ok else "corrupt"))


def run(events, tolerated_default=0.0):
    state, records, finishes = None, {}, 0
    for event in events:
        previous = records.get(event.outcome.job_id) if event.outcome else None
        t = apply_batch_event(state, previous, event, tolerated_default)
        for entry in t.entries:
            records[entry.job_id] = entry
        state = t.state or state
        if t.finished:  # the tracker reports, then clears `reporting`
            finishes += 1
            state = state.model_copy(update={"reporting": False})
    return state, records, finishes


def test_a_batch_ends_once_every_image_has_an_outcome_counted_once():
    state, records, finishes = run([opened(3), finished("j0", True), finished("j0", True),
                                    finished("j1", True), finished("stranger", False),
                                    finished("j2", True), finished("j2", False)])
    assert state.status is BatchStatus.SUCCEEDED and finishes == 1
    assert (state.succeeded, state.failed) == (3, 0)
    assert records["j1"].name == "1.png" and records["j1"].image == "s3://x/1.png"
    assert summary(state) == "Batch b completed: all 3 images succeeded."


def test_failures_within_the_tolerance_succeed_but_never_read_as_a_clean_success():
    state, _, _ = run([opened(4, tolerated=25), finished("j0", True), finished("j1", False),
                       finished("j2", True), finished("j3", True)])
    assert state.status is BatchStatus.SUCCEEDED and state.met_threshold
    assert "completed with failures: 1 of 4 images failed (25.0%)" in summary(state)


def test_failures_above_the_tolerance_fail_the_batch():
    state, _, _ = run([opened(2), finished("j0", True), finished("j1", False)])
    assert state.status is BatchStatus.FAILED and state.met_threshold is False
    assert summary(state).startswith("Batch b failed: 1 of 2 images failed (50.0%)")


def test_a_large_batch_opens_in_chunks_and_ends_after_its_last_image():
    chunk = opened(4)
    first = chunk.model_copy(update={"images": chunk.images[:2]})
    rest = chunk.model_copy(update={"kind": BatchEventKind.ENTRIES, "images": chunk.images[2:]})
    state, records, finishes = run([first, rest] + [finished(f"j{n}", True) for n in range(4)])
    assert state.status is BatchStatus.SUCCEEDED and finishes == 1
    assert records["j3"].name == "3.png"


def test_a_replayed_outcome_reports_a_batch_whose_report_never_went_out():
    state, records, _ = run([opened(1)])
    state = apply_batch_event(state, records["j0"], finished("j0", True), 0.0).state
    assert state.reporting  # finished; the report is not out yet (a crash here)
    records["j0"] = records["j0"].model_copy(update={"status": "done"})
    again = apply_batch_event(state, records["j0"], finished("j0", True), 0.0)
    assert again.finished and again.state.status is BatchStatus.SUCCEEDED
    reported = state.model_copy(update={"reporting": False})
    assert apply_batch_event(reported, records["j0"], finished("j0", True), 0.0).state is None


def test_a_batch_that_cannot_be_read_fails_at_once_and_a_duplicate_cannot_fail_a_real_one():
    rejected = BatchEvent(batch_id="b", kind=BatchEventKind.REJECTED, at=1.0,
                          error=JobError(code=ErrorCode.OBJECT_NOT_FOUND, message="no images"))
    state, _, finishes = run([rejected])
    assert state.status is BatchStatus.FAILED and finishes == 1
    assert "no images" in summary(state)
    state, _, _ = run([opened(1), rejected, finished("j0", True)])
    assert state.status is BatchStatus.SUCCEEDED


def test_a_batch_hands_its_images_to_the_pipeline_a_window_at_a_time():
    from streams.tracking.batchstate import to_release

    state = apply_batch_event(None, None, opened(20), 0.0).state
    assert to_release(state, known=20, window=4) == range(0, 4)
    state = state.model_copy(update={"released": 4})
    assert not to_release(state, 20, 4)  # four in flight: nothing more yet
    state = state.model_copy(update={"succeeded": 1, "failed": 1})
    assert to_release(state, 20, 4) == range(4, 6)  # two ended, two more go
    assert to_release(state, 5, 4) == range(4, 5)  # only what has been listed so far
    assert to_release(state, 20, 0) == range(4, 20)  # window 0: everything at once
    assert not to_release(state.model_copy(update={"status": "failed"}), 20, 4)


def test_a_cancelled_batch_cancels_what_waits_and_reports_the_rest_as_it_ends():
    from streams.tracking.batchstate import cancel_waiting, to_release

    state, records, _ = run([opened(5), finished("j0", True)])
    state = state.model_copy(update={"released": 3})  # j1 and j2 in the pipeline
    cancel = BatchEvent(batch_id="b", kind=BatchEventKind.CANCEL, at=3.0,
                        by="tenant acme (api-key ops)")
    state = apply_batch_event(state, None, cancel, 0.0).state
    assert state.cancelled_by == "tenant acme (api-key ops)" and not state.finished
    assert not to_release(state, 5, 10)  # nothing more goes to the pipeline
    assert apply_batch_event(state, None, cancel, 0.0).state is None  # once

    waiting = cancel_waiting(state, [records["j3"], records["j4"]], listed=5, at=3.0)
    assert [(e.job_id, e.status, e.cause) for e in waiting.entries] == [
        ("j3", "cancelled", "cancelled by tenant acme (api-key ops)"),
        ("j4", "cancelled", "cancelled by tenant acme (api-key ops)")]
    assert not waiting.finished
    for entry in waiting.entries:
        records[entry.job_id] = entry
    state = waiting.state
    # The two in the pipeline end as their jobs do: one finished first, one was cancelled.
    state = apply_batch_event(state, records["j1"], finished("j1", False), 0.0).state
    ending = apply_batch_event(state, records["j2"], BatchEvent(
        batch_id="b", kind=BatchEventKind.IMAGE, at=4.0, outcome=ImageOutcome(
            job_id="j2", status="cancelled", error="cancelled", cause="cancelled by …")), 0.0)
    assert ending.finished and ending.state.status is BatchStatus.CANCELLED
    assert (ending.state.succeeded, ending.state.failed, ending.state.cancelled) == (1, 1, 3)
    assert summary(ending.state) == ("Batch b was cancelled by tenant acme (api-key ops): 1 of "
                                     "5 images succeeded, 1 failed and 3 were cancelled.")


def test_a_batch_cancel_naming_another_tenant_or_a_finished_batch_changes_nothing():
    state, _, _ = run([opened(1).model_copy(update={"tenant": "acme"})])
    foreign = BatchEvent(batch_id="b", kind=BatchEventKind.CANCEL, at=3.0, tenant="globex")
    assert apply_batch_event(state, None, foreign, 0.0).state is None
    done, _, _ = run([opened(1), finished("j0", True)])
    mine = BatchEvent(batch_id="b", kind=BatchEventKind.CANCEL, at=3.0)
    assert apply_batch_event(done, None, mine, 0.0).state is None


def test_batch_events_are_cut_into_chunks_below_a_size():
    from agents.background.agents import chunks

    entries = [ImageEntry(job_id=f"j{n}", name=f"{n}.png", image=f"s3://x/{n}.png")
               for n in range(100)]
    runs = chunks(entries, 1000)
    assert [e for run in runs for e in run] == entries
    assert all(sum(len(e.model_dump_json()) for e in run) <= 1000 for run in runs)
    assert chunks(entries[:1], 1) == [entries[:1]]  # one oversized entry still goes


# --- webhooks ---

class Receiver:
    """A tiny local HTTP server standing in for a customer's webhook endpoint."""

    def __init__(self, statuses: list[int]):
        self.statuses, self.requests = list(statuses), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self):
        self.server.shutdown()


async def no_wait(_seconds):
    pass


# The receivers here listen on plain http on loopback, which deployments refuse by default.
LOCAL_RECEIVER = {"webhook_allow_http": True, "webhook_allowed_networks": ["127.0.0.1/32"]}


def test_a_webhook_is_signed_and_retried_until_it_is_accepted():
    receiver = Receiver([500, 503, 200])
    settings = Settings(webhook_secrets={"acme": "s3cret"}, webhook_attempts=5, **LOCAL_RECEIVER)
    delivery = WebhookDelivery(batch_id="b", url=receiver.url, secret_name="acme",
                               body={"type": "batch.completed", "batch_id": "b"})
    try:
        outcome = asyncio.run(deliver(settings, delivery, sleep=no_wait))
    finally:
        receiver.close()
    assert outcome["status"] == "delivered" and outcome["attempts"] == 3
    headers, body = receiver.requests[-1]
    assert json.loads(body)["batch_id"] == "b" and headers["X-Restyle-Delivery"] == "b"
    assert verify("s3cret", headers["X-Restyle-Timestamp"], body,
                  headers["X-Restyle-Signature"])
    assert not verify("wrong", headers["X-Restyle-Timestamp"], body,
                      headers["X-Restyle-Signature"])


def test_a_refusing_webhook_is_not_retried_and_a_dead_one_gives_up_with_the_cause():
    receiver = Receiver([400])
    settings = Settings(webhook_attempts=4, **LOCAL_RECEIVER)
    try:
        refused = asyncio.run(deliver(settings, WebhookDelivery(
            batch_id="b", url=receiver.url, body={}), sleep=no_wait))
    finally:
        receiver.close()
    assert refused["status"] == "failed" and refused["attempts"] == 1
    assert refused["http_status"] == 400
    dead = asyncio.run(deliver(settings, WebhookDelivery(
        batch_id="b", url="http://127.0.0.1:9/hook", body={}), sleep=no_wait))
    assert dead["status"] == "failed" and dead["attempts"] == 4 and dead["error"]
    unknown = asyncio.run(deliver(settings, WebhookDelivery(
        batch_id="b", url=receiver.url, secret_name="nope", body={}), sleep=no_wait))
    assert unknown["status"] == "failed" and "no webhook secret named 'nope'" in \
        unknown["error"]


def test_webhook_retries_stop_when_the_webhooks_retry_budget_is_spent():
    receiver = Receiver([503] * 50)
    settings = Settings(webhook_attempts=50, webhook_backoff_s=0.2,
                        retry_budgets={"webhooks": 1.0}, **LOCAL_RECEIVER)
    started = time.monotonic()
    try:
        outcome = asyncio.run(deliver(settings, WebhookDelivery(
            batch_id="b", url=receiver.url, body={})))  # real waits
    finally:
        receiver.close()
    assert outcome["status"] == "failed" and outcome["http_status"] == 503
    assert 2 <= outcome["attempts"] < 50 and time.monotonic() - started < 3


def test_a_webhook_host_whose_certificate_is_not_trusted_is_not_retried(tmp_path):
    from tests.tls import https_with_a_private_ca

    settings = Settings(webhook_attempts=4, webhook_allowed_networks=["127.0.0.1/32"])
    with https_with_a_private_ca(tmp_path) as (url, _ca):
        outcome = asyncio.run(deliver(settings, WebhookDelivery(
            batch_id="b", url=f"{url}/hook", body={}), sleep=no_wait))
    assert outcome["status"] == "failed" and outcome["attempts"] == 1
    assert outcome["error"] == "the webhook host's certificate is not trusted"


def test_a_tenant_cannot_sign_with_a_secret_given_to_another():
    receiver = Receiver([])
    settings = Settings(webhook_secrets={"acme-hooks": "s3cret"},
                        webhook_secret_tenants={"acme-hooks": ["acme"]}, **LOCAL_RECEIVER)

    def send(tenant):
        return asyncio.run(deliver(settings, WebhookDelivery(
            batch_id="b", url=receiver.url, secret_name="acme-hooks", tenant=tenant,
            body={}), sleep=no_wait))

    try:
        borrowed, unnamed, own = send("globex"), send(None), send("acme")
    finally:
        receiver.close()
    for refused in (borrowed, unnamed):
        assert refused["status"] == "failed" and refused["attempts"] == 0
        assert "no webhook secret named 'acme-hooks' is configured for tenant" in \
            refused["error"]
    assert own["status"] == "delivered" and own["signed"] is True
    assert len(receiver.requests) == 1


# --- the GPU worker's duty cycle ---

def test_the_duty_cycle_counts_model_time_only_while_work_is_held():
    from gpu_agent.duty import DutyMeter

    now = [0.0]
    meter = DutyMeter(clock=lambda: now[0])
    meter.received()          # t=0: a request arrives
    meter.received()          # a second one, prefetched
    now[0] = 1.0
    meter.model_ran(0.9)      # the first one's model call
    meter.answered()
    now[0] = 2.0
    meter.model_ran(0.8)
    meter.answered()          # t=2: nothing held
    now[0] = 10.0             # eight idle seconds with no work do not count
    meter.received()
    now[0] = 11.0
    meter.model_ran(1.0)
    meter.answered()
    assert meter.duty_cycle() == pytest.approx(2.7 / 3.0)
