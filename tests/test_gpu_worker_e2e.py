"""The GPU worker as its own consumer group: it renders a request once, even when redelivered."""
from __future__ import annotations

import json
import uuid

from PIL import Image

from tests.conftest import TopicCollector


def test_a_redelivered_render_request_is_answered_without_rendering_again(e2e):
    import io

    buffer = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").save(buffer, format="PNG")
    control = e2e.put_object("gpu-test/control.png", buffer.getvalue())
    job_id = f"render-{uuid.uuid4().hex[:8]}"
    request = {"job_id": job_id, "prompt": "(a bright loft)1.0", "control_image": control,
               "params": {"steps": 3, "guidance": 5.0, "controlnet_scale": 1.0, "seed": 5,
                          "width": 64, "height": 64, "negative_prompt": "", "num_images": 1},
               "output_prefix": f"s3://restyle/gpu-test/{job_id}",
               "reply_topic": "restyle.test-render-replies", "context": {"who": "test"}}
    replies = TopicCollector(e2e.endpoints["kafka_bootstrap"], ["restyle.test-render-replies"],
                             e2e.settings.partitions)
    try:
        e2e.publish(request, key=job_id.encode(), topic="restyle.render-requests")
        first = replies.wait_for("restyle.test-render-replies",
                                 lambda m: m.key() == job_id.encode(), 120)
        e2e.publish(request, key=job_id.encode(), topic="restyle.render-requests")
        both = replies.wait_for("restyle.test-render-replies",
                                lambda m: m.key() == job_id.encode(), 120, count=2)
    finally:
        replies.close()
    one, two = (json.loads(m.value()) for m in both)
    assert one["images"] == two["images"] == [f"s3://restyle/gpu-test/{job_id}/0.png"]
    assert two["context"] == {"who": "test"}  # the caller's context comes back untouched
    progress = e2e.collector.matching(
        "restyle.job-events",
        lambda m: m.key() == job_id.encode() and json.loads(m.value())["kind"] == "progress")
    assert len(progress) == 3  # three steps, rendered once
    assert first[0].value() is not None
