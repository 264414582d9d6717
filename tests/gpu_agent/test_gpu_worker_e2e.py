"""The GPU worker as its own consumer group: it renders a request once, even when redelivered."""
from __future__ import annotations

import base64
import io
import json
import uuid

import pytest
from PIL import Image

from tests.conftest import TopicCollector


def render_request(e2e, job_id: str) -> dict:
    buffer = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").save(buffer, format="PNG")
    control = e2e.put_object(f"gpu-test/{job_id}-control.png", buffer.getvalue())
    return {"job_id": job_id, "prompt": "(a bright loft)1.0", "control_image": control,
            "params": {"steps": 3, "guidance": 5.0, "controlnet_scale": 1.0, "seed": 5,
                       "width": 64, "height": 64, "negative_prompt": "", "num_images": 1},
            "output_prefix": f"s3://restyle/gpu-test/{job_id}",
            "reply_topic": "restyle.test-render-replies", "context": {"who": "test"}}


def progress_ticks(e2e, job_id: str) -> list:
    return e2e.collector.matching(
        "restyle.job-events",
        lambda m: m.key() == job_id.encode() and json.loads(m.value())["kind"] == "progress")


def deliver(e2e, request: dict, times: int = 1) -> list[dict]:
    """Publish request `times` times, each once the previous one is answered; the replies."""
    key = request["job_id"].encode()
    replies = TopicCollector(e2e.endpoints["kafka_bootstrap"], ["restyle.test-render-replies"],
                             e2e.settings.partitions)
    try:
        for n in range(times):
            e2e.publish(request, key=key, topic="restyle.render-requests")
            answered = replies.wait_for("restyle.test-render-replies",
                                        lambda m: m.key() == key, 120, count=n + 1)
    finally:
        replies.close()
    return [json.loads(m.value()) for m in answered]


def test_a_redelivered_render_request_is_answered_without_rendering_again(e2e):
    job_id = f"render-{uuid.uuid4().hex[:8]}"
    one, two = deliver(e2e, render_request(e2e, job_id), times=2)
    assert one["images"] == two["images"] == [f"s3://restyle/gpu-test/{job_id}/0.png"]
    assert two["render_ms"] == one["render_ms"]  # answered from the manifest
    assert two["context"] == {"who": "test"}  # the caller's context comes back untouched
    assert len(progress_ticks(e2e, job_id)) == 3  # three steps, rendered once


@pytest.mark.parametrize("manifest", ["names-missing-images", "unreadable", "another-job",
                                      "points-elsewhere"])
def test_a_manifest_that_cannot_be_trusted_is_rendered_again(e2e, manifest):
    """A crash between writing the manifest and the images leaves a manifest naming images
    that do not exist; a write cut short leaves one that does not parse; a manifest written by
    another job at the same prefix (a new upload to a key rendered before) or naming images
    outside the prefix is someone else's answer. Each time the request renders instead."""
    job_id = f"render-{uuid.uuid4().hex[:8]}"
    prefix = f"gpu-test/{job_id}"
    body = {"job_id": job_id, "images": [f"s3://restyle/{prefix}/0.png"], "seed": 5,
            "render_ms": 1.0}
    if manifest in ("another-job", "points-elsewhere"):
        old = e2e.put_object(f"{prefix}/0.png" if manifest == "another-job" else
                             f"gpu-test/elsewhere-{job_id}.png", b"an earlier answer")
        body.update(job_id="an-earlier-job" if manifest == "another-job" else job_id,
                    images=[old])
    stored = json.dumps(body).encode()
    e2e.put_object(f"{prefix}/render.json",
                   stored[:20] if manifest == "unreadable" else stored)
    [reply] = deliver(e2e, render_request(e2e, job_id))
    assert reply["render_ms"] > 1.0
    image = e2e.s3.get_object(Bucket="restyle", Key=f"gpu-test/{job_id}/0.png")["Body"].read()
    assert Image.open(io.BytesIO(image)).size == (64, 64)
    e2e.collector.wait_for("restyle.job-events", lambda m: m.key() == job_id.encode() and
                           json.loads(m.value())["kind"] == "progress", 30, count=3)


def test_a_request_that_carries_its_control_map_renders_without_reading_it(e2e):
    """Between restyle's own workers, small images travel beside their URIs: the GPU worker
    renders from the map the request carries (here nothing is stored at its URI, so a read
    would fail the job), and the reply carries the image it stored, unless the stack sends
    images by URI only (RESTYLE_CARRY_IMAGE_MAX_BYTES=0, as on Apache Kafka here)."""
    job_id = f"render-{uuid.uuid4().hex[:8]}"
    request = render_request(e2e, job_id)
    map_png = e2e.s3.get_object(Bucket="restyle",
                                Key=f"gpu-test/{job_id}-control.png")["Body"].read()
    never_stored = f"s3://restyle/gpu-test/{job_id}-carried-only.png"
    request.update(control_image=never_stored,
                   carried={never_stored: base64.b64encode(map_png).decode()})
    [reply] = deliver(e2e, request)
    assert reply.get("error") is None
    stored = e2e.s3.get_object(Bucket="restyle", Key=f"gpu-test/{job_id}/0.png")["Body"].read()
    assert reply["images"] == [f"s3://restyle/gpu-test/{job_id}/0.png"]
    if e2e.stack.extra_env.get("RESTYLE_CARRY_IMAGE_MAX_BYTES") == "0":
        assert reply["carried"] == {}
    else:
        assert base64.urlsafe_b64decode(reply["carried"][reply["images"][0]]) == stored
    assert Image.open(io.BytesIO(stored)).size == (64, 64)
