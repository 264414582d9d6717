"""Background replacement end to end: batches published with a plain Kafka client (and posted to
the status API), through the real broker, S3 server and workers, to restyle.results, the batch
report in S3, the batch.completed notification, a signed webhook, and the Titan endpoints."""
from __future__ import annotations

import base64
import csv
import io
import json
import time
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from agents.models.segment import SalientSegmenter
from tests.agents.background.test_contracts import Receiver
from tests.agents.background.test_stages import skimage_photo
from tests.conftest import WEBHOOK_SECRET


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wait_for_batch(e2e, batch_id: str, timeout_s: float = 240, until=None) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = e2e.get(f"/batches/{batch_id}")
        if status == 200 and body["status"] != "running" and not body["reporting"] and \
                (until is None or until(body)):
            return body
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} did not finish: {status} {body}")


def notification(e2e, batch_id: str) -> dict:
    found = e2e.collector.wait_for("restyle.notifications",
                                   lambda m: m.key() == batch_id.encode(), 60)
    return json.loads(found[0].value())


@pytest.fixture(scope="module")
def webhook(e2e):
    """One receiver per broker (it follows e2e's parameter): run alone, the module runs both
    brokers back to back, and a receiver shared by them answered 503 to the first one only."""
    receiver = Receiver([503])  # the first delivery attempt fails; the retry gets through
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def mixed_batch(e2e, webhook):
    """Three real photos (a person, an animal, a vehicle) with u2netp keep-masks, plus a
    missing image, a corrupt one and one whose mask is the wrong size."""
    batch_id = f"mixed-{uuid.uuid4().hex[:8]}"
    salient = SalientSegmenter.from_pretrained("bundled")
    images, photos, keeps = [], {}, {}
    for name in ("astronaut", "chelsea", "rocket"):
        photo = skimage_photo(name)
        keep = Image.fromarray(salient.main_object(photo).astype(np.uint8) * 255)
        if name == "rocket":  # a thin object: keep its region
            keep = Image.new("L", photo.size, 0)
            keep.paste(255, (280, 40, 360, 420))
        uri = e2e.put_object(f"bg/{batch_id}/{name}.png", png(photo))
        mask = e2e.put_object(f"bg/{batch_id}/masks/{name}.png", png(keep))
        images.append({"uri": uri, "mask_image": mask})
        photos[name], keeps[name] = photo, np.asarray(keep) >= 128
    corrupt = e2e.put_object(f"bg/{batch_id}/corrupt.png", b"\x89PNG\r\n\x1a\n not really")
    small_mask = e2e.put_object(f"bg/{batch_id}/masks/small.png", png(Image.new("L", (8, 8))))
    wrong = e2e.put_object(f"bg/{batch_id}/wrong-mask.png", png(skimage_photo("coffee")))
    images += [{"uri": f"s3://{e2e.bucket}/bg/{batch_id}/missing.png",
                "mask_image": small_mask},
               {"uri": corrupt, "mask_image": small_mask},
               {"uri": wrong, "mask_image": small_mask}]
    e2e.publish({"pipeline": "background_replace", "batch_id": batch_id, "images": images,
                 "prompt": "london city background", "negative_prompt": "low quality",
                 "mode": "PRECISE", "params": {"seed": 11, "num_images": 2},
                 "tolerated_failure_pct": 50,
                 "webhook": {"url": webhook.url, "secret_name": "tests"}},
                key=batch_id.encode())
    return batch_id, photos, keeps


def test_a_mixed_batch_ends_with_a_truthful_report_and_notification(e2e, mixed_batch):
    batch_id, photos, keeps = mixed_batch
    batch = wait_for_batch(e2e, batch_id)
    assert batch["status"] == "succeeded" and batch["met_threshold"] is True
    assert batch["counts"] == {"total": 6, "succeeded": 3, "failed": 3, "cancelled": 0,
                               "waiting": 0}

    note = notification(e2e, batch_id)
    assert note["type"] == "batch.completed" and note["status"] == "succeeded"
    assert note["counts"] == {"total": 6, "succeeded": 3, "failed": 3, "cancelled": 0,
                               "waiting": 0}
    assert "completed with failures: 3 of 6 images failed" in note["summary"]
    # Links are presigned URLs, never bare storage paths.
    links = list(note["report"].values()) + [u for o in note["outputs"] for u in o["urls"]]
    assert links and all(link.startswith("http") for link in links)
    assert {o["name"] for o in note["outputs"]} == {"astronaut.png", "chelsea.png",
                                                    "rocket.png"}
    assert all(len(o["urls"]) == 2 for o in note["outputs"])
    causes = {f["name"]: (f["error"], f["cause"]) for f in note["failures"]}
    assert causes["missing.png"][0] == "object_not_found"
    assert causes["corrupt.png"][0] == "not_an_image"
    assert causes["wrong-mask.png"][0] == "invalid_mask"
    assert "8x8" in causes["wrong-mask.png"][1]

    # The report, through the presigned links: every image with its status and cause.
    with urllib.request.urlopen(note["report"]["json"]) as response:
        report = json.loads(response.read())
    assert report["status"] == "succeeded" and len(report["images"]) == 6
    with urllib.request.urlopen(note["report"]["csv"]) as response:
        rows = list(csv.DictReader(io.StringIO(response.read().decode())))
    by_name = {row["name"]: row for row in rows}
    assert by_name["astronaut.png"]["status"] == "done"
    assert by_name["astronaut.png"]["seed"] == "11"
    assert by_name["corrupt.png"]["status"] == "failed" and by_name["corrupt.png"]["cause"]


def test_precise_outputs_keep_every_masked_pixel_of_the_photo(e2e, mixed_batch):
    batch_id, photos, keeps = mixed_batch
    wait_for_batch(e2e, batch_id)
    for name, photo in photos.items():
        job_results = e2e.collector.matching("restyle.results", lambda m: json.loads(
            m.value()).get("batch_id") == batch_id and json.loads(m.value())["result"] and
            json.loads(m.value())["result"]["name"] == f"{name}.png")
        result = json.loads(job_results[0].value())
        assert result["status"] == "done" and result["pipeline"] == "background_replace"
        for image in result["result"]["images"]:
            key = image["uri"].split("/", 3)[3]
            body = e2e.s3.get_object(Bucket=e2e.bucket, Key=key)["Body"].read()
            out = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
            assert out.shape[:2] == (photo.height, photo.width)
            assert np.array_equal(out[keeps[name]], np.asarray(photo)[keeps[name]])


def test_the_webhook_gets_a_signed_notification_and_the_batch_records_the_delivery(
        e2e, mixed_batch, webhook):
    from streams.tracking.webhooks import verify

    batch_id, _, _ = mixed_batch
    batch = wait_for_batch(e2e, batch_id, until=lambda b: b["notification"] is not None)
    assert batch["notification"]["status"] == "delivered"
    assert batch["notification"]["attempts"] == 2  # a 503 first, then accepted
    headers, body = webhook.requests[-1]
    assert verify(WEBHOOK_SECRET, headers["X-Restyle-Timestamp"], body,
                  headers["X-Restyle-Signature"])
    assert json.loads(body)["batch_id"] == batch_id


def test_a_prefix_batch_posted_to_the_api_runs_every_image_under_it(e2e):
    batch_id = f"prefix-{uuid.uuid4().hex[:8]}"
    for name in ("astronaut", "coffee"):
        e2e.put_object(f"bg/{batch_id}/in/{name}.png", png(skimage_photo(name)))
    e2e.put_object(f"bg/{batch_id}/in/readme.txt", b"not an image, skipped")
    status, body = e2e.post_json("/batches", {
        "batch_id": batch_id, "images": [f"s3://{e2e.bucket}/bg/{batch_id}/in/"],
        "prompt": "a beach", "mask_prompt": "bus", "mode": "DEFAULT"})
    assert status == 202 and body == {"batch_id": batch_id}
    batch = wait_for_batch(e2e, batch_id)
    # The tiny random detector finds a "bus" in both photos; SAM's mask keeps part of it.
    assert batch["counts"] == {"total": 2, "succeeded": 2, "failed": 0, "cancelled": 0,
                               "waiting": 0}
    with urllib.request.urlopen(batch["report"]["json"]) as response:
        report = json.loads(response.read())
    assert sorted(i["name"] for i in report["images"]) == ["astronaut.png", "coffee.png"]
    for image in report["images"]:
        assert image["status"] == "done" and len(image["outputs"]) == 1
    # Nobody waits on one image of a batch: its render took the batch lane.
    assert render_lanes(e2e, batch_id, 2) == {"restyle.render-requests.batch"}


def render_lanes(e2e, job_prefix: str, expected: int) -> set[str]:
    """The render topics the requests of jobs whose ids start with job_prefix went to."""
    from tests.conftest import TopicCollector

    topics = ["restyle.render-requests", "restyle.render-requests.batch"]
    collector = TopicCollector(e2e.endpoints["kafka_bootstrap"], topics, e2e.settings.partitions)
    try:
        deadline = time.monotonic() + 30
        while True:
            found = [m for topic in topics for m in collector.matching(
                topic, lambda m: json.loads(m.value())["job_id"].startswith(job_prefix))]
            if len(found) >= expected or time.monotonic() > deadline:
                return {m.topic() for m in found}
            time.sleep(0.3)
    finally:
        collector.close()


def test_a_bad_batch_goes_to_the_dlq_and_its_batch_fails_with_the_cause(e2e):
    batch_id = f"bad-{uuid.uuid4().hex[:8]}"
    e2e.publish({"pipeline": "background_replace", "batch_id": batch_id, "images": [],
                 "prompt": "x"}, key=batch_id.encode())
    batch = wait_for_batch(e2e, batch_id, 60)
    assert batch["status"] == "failed" and batch["error"]["code"] == "schema_violation"
    assert "images" in batch["error"]["message"]
    letters = e2e.collector.wait_for("restyle.dlq", lambda m: m.key() == batch_id.encode(), 30)
    assert dict(letters[0].headers())["restyle-dlq-code"] == b"schema_violation"
    status, body = e2e.post_json("/batches", {"images": ["s3://x/a.png"]})
    assert status == 400 and "prompt" in body["error"]["message"]


def test_a_titan_request_runs_and_answers_in_the_titan_response_shape(e2e):
    photo = skimage_photo("chelsea").resize((160, 120))
    keep = np.zeros((120, 160), dtype=np.uint8)
    keep[30:90, 40:120] = 255
    titan_mask = 255 - keep  # Titan outpainting: black is the region kept
    status, body = e2e.post_json("/v1/titan", {
        "taskType": "OUTPAINTING",
        "outPaintingParams": {"text": "a sunny meadow", "image": base64.b64encode(
            png(photo)).decode(), "maskImage": base64.b64encode(png(Image.fromarray(
                titan_mask))).decode(), "outPaintingMode": "PRECISE"},
        "imageGenerationConfig": {"numberOfImages": 1, "quality": "standard",
                                  "cfgScale": 7.5, "seed": 42}})
    assert status == 202, body
    job_id = body["job_id"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status, answer = e2e.get(f"/jobs/{job_id}/titan")
        if status == 200:
            break
        time.sleep(0.5)
    assert status == 200 and answer["error"] is None and len(answer["images"]) == 1
    assert "maskImage" not in answer  # only when the request set returnMask
    # Someone waits on a Titan request: its render took the interactive lane.
    assert render_lanes(e2e, job_id, 1) == {"restyle.render-requests"}
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))))
    assert out.shape[:2] == (120, 160)
    assert np.array_equal(out[keep == 255], np.asarray(photo)[keep == 255])
    status, refused = e2e.post_json("/v1/titan", {"taskType": "OUTPAINTING",
                                                  "outPaintingParams": {"text": "x"}})
    assert status == 400 and refused["error"]["code"] == "ValidationException"


def test_a_titan_body_on_the_uploads_topic_is_a_batch_named_by_its_key(e2e):
    batch_id = f"titan-{uuid.uuid4().hex[:8]}"
    photo = skimage_photo("coffee").resize((96, 64))
    mask = np.full((64, 96), 255, dtype=np.uint8)
    mask[16:48, 24:72] = 0  # Titan inpainting: black is repainted
    e2e.publish({"taskType": "INPAINTING", "inPaintingParams": {
        "text": "a marble counter", "image": base64.b64encode(png(photo)).decode(),
        "maskImage": base64.b64encode(png(Image.fromarray(mask))).decode(),
        "returnMask": True},
        "imageGenerationConfig": {"seed": 3}}, key=batch_id.encode())
    batch = wait_for_batch(e2e, batch_id)
    assert batch["status"] == "succeeded" and batch["counts"]["total"] == 1
    found = e2e.collector.wait_for("restyle.results", lambda m: json.loads(
        m.value()).get("batch_id") == batch_id, 60)
    result = json.loads(found[0].value())
    assert result["pipeline"] == "background_replace" and result["status"] == "done"
    status, answer = e2e.get(f"/jobs/{result['job_id']}/titan")
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))))
    kept = mask == 255  # everything outside the black region is the photo's, exactly
    assert np.array_equal(out[kept], np.asarray(photo)[kept])
    returned = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["maskImage"]))))
    assert np.array_equal(returned >= 128, kept)  # the mask in Titan's convention


def test_labels_are_detected_for_a_front_end(e2e):
    import urllib.request as request

    boundary = "restyle-boundary"
    photo = png(skimage_photo("astronaut"))
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + photo + \
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"labels\"\r\n\r\n" \
        f"person, bus\r\n--{boundary}--\r\n".encode()
    with request.urlopen(request.Request(
            e2e.status_url + "/labels", data=body, method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                     **e2e.auth()})) as answer:
        found = json.loads(answer.read())
    assert (found["width"], found["height"]) == (512, 512)
    assert found["labels"]  # the tiny random detector sees a "bus" in the astronaut photo
    for label in found["labels"]:
        assert label["label"] in {"person", "bus"} and 0 <= label["confidence"] <= 1
        assert 0 <= label["box"]["x0"] < label["box"]["x1"] <= 512
