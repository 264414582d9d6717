"""Cancelling jobs end to end: a render stops at its next denoising step and stores nothing, a
job cancelled before it was submitted never starts, a finished job cannot be cancelled, and
every cancelled job ends `cancelled` with who asked, in one result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest


def events(e2e, job_id: str) -> list[dict]:
    return [json.loads(m.value()) for m in e2e.collector.matching(
        "restyle.job-events", lambda m: m.key() == job_id.encode())]


def long_render(e2e, job_id: str, steps: int = 150, size: int = 128) -> None:
    """A conditioned generation that renders for tens of seconds on the tiny models (about
    0.2 s a step at 128 px on this CPU)."""
    uri = e2e.put_object(f"cancel/{job_id}.png", _photo())
    e2e.publish({"job_id": job_id, "pipeline": "condition", "image": uri,
                 "params": {"steps": steps, "width": size, "height": size}},
                key=job_id.encode())


def _photo() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (120, 90, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def rendering(e2e, job_id: str) -> None:
    e2e.collector.wait_for("restyle.job-events", lambda m: m.key() == job_id.encode() and
                           (json.loads(m.value()).get("progress") or {}).get("step", 0) >= 2,
                           180)


def stored(e2e, job_id: str) -> list[str]:
    listed = e2e.s3.list_objects_v2(Bucket=e2e.bucket, Prefix=f"results/{job_id}/")
    return [item["Key"].rsplit("/", 1)[-1] for item in listed.get("Contents", [])]


def test_a_render_stops_at_its_next_step_and_stores_nothing(e2e):
    job_id = f"cancel-render-{uuid.uuid4().hex[:8]}"
    long_render(e2e, job_id)
    rendering(e2e, job_id)
    status, body = e2e.request("DELETE", f"/jobs/{job_id}")
    assert status == 202 and body["status"] == "generating"

    outcome = e2e.result(job_id, 60)
    assert outcome["status"] == "cancelled"
    assert outcome["error"]["code"] == "cancelled"
    assert outcome["error"]["message"].startswith("cancelled by tenant ")
    time.sleep(3)  # what a render that went on would have stored by now
    steps = [e["progress"]["step"] for e in events(e2e, job_id) if e.get("progress")]
    assert max(steps) < 150  # it stopped, it did not finish
    assert "0.png" not in stored(e2e, job_id) and "render.json" not in stored(e2e, job_id)
    assert len(e2e.results(job_id)) == 1
    assert e2e.get(f"/jobs/{job_id}")[1]["status"] == "cancelled"


@pytest.mark.usefixtures("first_broker_only")
def test_a_job_cancelled_before_it_is_submitted_never_starts(e2e):
    job_id = f"cancel-first-{uuid.uuid4().hex[:8]}"
    e2e.publish({"cancel": job_id, "by": "the order service"}, key=job_id.encode())
    outcome = e2e.result(job_id, 60)
    assert outcome["status"] == "cancelled"
    assert outcome["error"]["message"] == "cancelled by an upstream system (the order service)"
    long_render(e2e, job_id)  # the submission arrives afterwards
    time.sleep(5)
    assert not any(e.get("status") in ("analyzing", "generating") for e in events(e2e, job_id))
    assert stored(e2e, job_id) == [] and len(e2e.results(job_id)) == 1


@pytest.mark.usefixtures("first_broker_only")
def test_only_the_owner_cancels_and_only_while_the_job_runs(e2e):
    assert e2e.request("DELETE", "/jobs/never-submitted")[0] == 404
    job_id = f"cancel-theirs-{uuid.uuid4().hex[:8]}"
    long_render(e2e, job_id, steps=30)
    rendering(e2e, job_id)
    assert e2e.request("DELETE", f"/jobs/{job_id}", tenant="someone-else")[0] == 404
    assert e2e.request("DELETE", f"/jobs/{job_id}", authorized=False)[0] == 401
    outcome = e2e.result(job_id, 180)
    assert outcome["status"] == "done"  # nobody who may cancel it did
    status, body = e2e.request("DELETE", f"/jobs/{job_id}")
    assert status == 409 and body["error"]["code"] == "already_finished"


@pytest.mark.usefixtures("embedded_stack_only")
def test_the_cli_cancels_a_running_job_and_waits_for_it_to_end(e2e):
    job_id = f"cancel-cli-{uuid.uuid4().hex[:8]}"
    long_render(e2e, job_id)
    rendering(e2e, job_id)
    env = {**os.environ, "RESTYLE_STATE_DIR": str(e2e.stack.state_dir)}
    env.pop("RESTYLE_KAFKA_BOOTSTRAP", None)
    done = subprocess.run([sys.executable, "-m", "streams.cli.main", "cancel", job_id, "--wait"],
                          capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    assert f"cancelling job {job_id} (it was generating)" in done.stdout
    assert f"job {job_id}: cancelled" in done.stdout and "[cancelled]" in done.stdout
    again = subprocess.run([sys.executable, "-m", "streams.cli.main", "cancel", job_id],
                           capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 1 and "already ended cancelled" in again.stderr


def test_a_cancelled_batch_cancels_its_pending_images_and_reports_the_rest_truthfully(e2e):
    """Five images, two at a time through the pipeline (RESTYLE_BATCH_WINDOW=2): cancelled
    while the first two render, the three waiting never start, the two rendering stop, and the
    batch ends `cancelled` with a report and a notification that say so, image by image."""
    batch_id = f"cancel-batch-{uuid.uuid4().hex[:8]}"
    images = []
    for n in range(5):
        uri = e2e.put_object(f"cancel/{batch_id}/{n}.png", _photo())
        images.append({"uri": uri, "mask_image": e2e.put_object(
            f"cancel/{batch_id}/masks/{n}.png", _mask())})
    e2e.publish({"pipeline": "background_replace", "batch_id": batch_id, "images": images,
                 "prompt": "a beach", "params": {"steps": 150, "width": 128, "height": 128}},
                key=batch_id.encode())
    e2e.collector.wait_for("restyle.job-events", lambda m: m.key().startswith(
        f"{batch_id}-".encode()) and json.loads(m.value()).get("progress"), 180)

    env = {**os.environ, "RESTYLE_STATE_DIR": str(e2e.stack.state_dir)}
    env.pop("RESTYLE_KAFKA_BOOTSTRAP", None)
    done = subprocess.run([sys.executable, "-m", "streams.cli.main", "cancel", batch_id,
                           "--wait"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"cancelling batch {batch_id} (it was running)" in done.stdout

    status, batch = e2e.get(f"/batches/{batch_id}")
    assert status == 200 and batch["status"] == "cancelled"
    counts = batch["counts"]
    assert counts["total"] == 5 and counts["waiting"] == 0
    assert counts["succeeded"] + counts["failed"] + counts["cancelled"] == 5
    assert counts["cancelled"] >= 3  # the three that waited, at least
    assert batch["cancelled_by"].startswith("tenant ")

    report = json.loads(e2e.s3.get_object(Bucket=e2e.bucket, Key=f"batches/{batch_id}/"
                                          "report.json")["Body"].read())
    assert report["status"] == "cancelled"
    assert report["summary"].startswith(f"Batch {batch_id} was cancelled by tenant ")
    cancelled = [i for i in report["images"] if i["status"] == "cancelled"]
    assert len(cancelled) == counts["cancelled"]
    assert all(i["error"] == "cancelled" and i["cause"].startswith("cancelled by tenant ")
               for i in cancelled)
    note = json.loads(e2e.collector.wait_for("restyle.notifications",
                                             lambda m: m.key() == batch_id.encode(), 60)[0]
                      .value())
    assert note["status"] == "cancelled" and note["counts"] == counts
    # One result per image job that started, each ended once.
    for image in report["images"]:
        assert len(e2e.results(image["job_id"])) == (1 if image["status"] != "cancelled"
                                                     or image["job_id"] in started(e2e)
                                                     else 0)
    for image in cancelled:  # its masks may be there, never a rendered image
        assert "0.png" not in stored(e2e, image["job_id"])
    status, body = e2e.request("DELETE", f"/batches/{batch_id}")
    assert status == 409 and body["error"]["code"] == "already_finished"


def started(e2e) -> set[str]:
    """Job ids the tracker started (submitted to a pipeline)."""
    return {m.key().decode() for m in e2e.collector.matching(
        "restyle.job-events", lambda m: json.loads(m.value()).get("kind") == "submitted")}


def _mask() -> bytes:
    import io

    from PIL import Image

    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (64, 64, 192, 192))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_job_waiting_for_the_gpu_shows_how_many_requests_are_ahead_of_it(e2e):
    """Three renders on one partition of the request topic: while the first renders, the
    second and third wait `queued_for_gpu` with 1 and 2 requests ahead of them."""
    from streams.api.routing import job_partition

    partitions, tag = e2e.settings.partitions, uuid.uuid4().hex[:6]
    candidates = (f"queue-{tag}-{n}" for n in range(1000))
    first = next(candidates)
    same = [c for c in candidates if job_partition(c, partitions) ==
            job_partition(first, partitions)][:2]
    long_render(e2e, first, size=192)  # a minute or more: the others wait behind it
    rendering(e2e, first)
    for job_id in same:
        long_render(e2e, job_id, steps=20)

    deadline = time.monotonic() + 45
    while True:
        shown = [e2e.get(f"/jobs/{job_id}")[1] for job_id in same]
        if [s.get("queue_position") for s in shown] == [1, 2]:
            break
        assert time.monotonic() < deadline, (
            [(s["status"], s.get("queue_position")) for s in shown],
            [e.get("queue") for job_id in (first, *same) for e in events(e2e, job_id)
             if e.get("status") == "queued_for_gpu"])
        time.sleep(0.5)
    assert all(s["status"] == "queued_for_gpu" and "queue" not in s for s in shown)
    assert "queue_position" not in e2e.get(f"/jobs/{first}")[1]  # it is rendering
    for job_id in (first, *same):
        e2e.request("DELETE", f"/jobs/{job_id}")
    for job_id in (first, *same):
        assert e2e.result(job_id, 120)["status"] == "cancelled"
