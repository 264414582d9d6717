"""The room makeover end to end: upload events published with a plain Kafka client, through the
real broker, S3 server and worker processes, to restyle.results, the status API and S3."""
from __future__ import annotations

import json
import urllib.request
import uuid

import pytest
from PIL import Image

from tests.conftest import jpeg_bytes


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def room_uri(e2e, room_photos) -> str:
    return e2e.put_object("incoming/room-1.jpg", room_photos[1].read_bytes())


def test_a_room_photo_becomes_a_restyled_room_with_products(e2e, room_uri):
    job_id = new_id("room")
    e2e.publish({"job_id": job_id, "pipeline": "room_makeover", "image": room_uri,
                 "style": "scandinavian", "params": {"seed": 7, "num_images": 2},
                 "tenant": "acme"}, key=job_id.encode())

    result = e2e.result(job_id)
    assert result["status"] == "done", result
    assert result["tenant"] == "acme"
    assert result["result"]["seed"] == 7
    images = result["result"]["images"]
    # Under the tenant's own prefix (the default tenant's would be results/ itself).
    results = f"tenants/acme/results/{job_id}"
    assert [i["uri"] for i in images] == [f"s3://restyle/{results}/0.png",
                                          f"s3://restyle/{results}/1.png"]
    prompt = result["result"]["prompt"]
    assert prompt.startswith("(a scandinavian interior")

    # The images are in S3, at the deterministic keys, at the requested size.
    body = e2e.s3.get_object(Bucket="restyle", Key=f"{results}/0.png")["Body"].read()
    import io
    assert Image.open(io.BytesIO(body)).size == (64, 64)
    # So is the depth map the render was conditioned on (small enough to travel with the
    # render request, not the photo's size).
    assert result["result"]["depth_map"] == f"s3://restyle/{results}/depth.png"
    depth = e2e.s3.get_object(Bucket="restyle", Key=f"{results}/depth.png")["Body"].read()
    assert Image.open(io.BytesIO(depth)).size == (64, 64)

    # The status API tells the same story, with a working presigned link.
    status, job = e2e.get(f"/jobs/{job_id}", tenant="acme")
    assert status == 200 and job["status"] == "done" and job["tenant"] == "acme"
    url = job["result"]["images"][0]["url"]
    with urllib.request.urlopen(url) as response:
        assert response.read() == body
    # Products found in the generated room come from the catalog, with boxes and scores.
    for product in job["result"]["products"]:
        status, stored = e2e.get(f"/products/{product['product_id']}")
        assert status == 200 and stored["caption"] == product["caption"]
        assert {"caption", "score", "box"} <= set(product)

    # Every status change and render step went out on restyle.job-events.
    events = [json.loads(m.value()) for m in e2e.collector.matching(
        "restyle.job-events", lambda m: m.key() == job_id.encode())]
    statuses = [e["status"] for e in events if e["kind"] == "status"]
    # queued_for_gpu (sent after the render request) and generating (from the GPU worker
    # that took it) come from two producers: either may land first.
    assert statuses[0] == "analyzing" and statuses[3] == "re-analyzing"
    assert sorted(statuses[1:3]) == ["generating", "queued_for_gpu"]
    steps = [e["progress"]["step"] for e in events if e["kind"] == "progress"]
    assert steps == [1, 2]

    # On Tansu the stack chains analyze -> embed -> retrieve -> compose -> depth in-process
    # (the default): the job never touched the depth stage's topic. Split (the other
    # broker's stack, RESTYLE_CHAIN_STAGES=false), it went through it once.
    through_depth = e2e.keyed_records("restyle.stage.depth", job_id)
    assert len(through_depth) == (0 if e2e.broker == "tansu" else 1)


def test_a_missing_job_id_is_generated(e2e, room_uri):
    marker = uuid.uuid4().hex
    e2e.publish({"pipeline": "room_makeover", "image": room_uri, "style": "cozy",
                 "tenant": marker})
    found = e2e.collector.wait_for(
        "restyle.results", lambda m: json.loads(m.value()).get("tenant") == marker, 180)
    result = json.loads(found[0].value())
    assert result["status"] == "done" and len(result["job_id"]) == 32


def test_a_repeated_job_id_never_produces_a_second_result(e2e, room_uri):
    job_id = new_id("dup")
    event = {"job_id": job_id, "pipeline": "room_makeover", "image": room_uri, "style": "modern"}
    e2e.publish(event, key=job_id.encode())
    e2e.publish(event, key=job_id.encode())
    assert e2e.result(job_id)["status"] == "done"
    e2e.publish(event, key=job_id.encode())  # and once more after it finished
    later = new_id("dup-after")
    e2e.publish({**event, "job_id": later}, key=later.encode())
    e2e.result(later)  # a job submitted after the repeats is done: the repeats were handled
    assert len(e2e.results(job_id)) == 1


def test_unknown_job_is_404_and_never_looks_unfinished(e2e):
    status, body = e2e.get("/jobs/no-such-job")
    assert status == 404
    assert body["error"]["code"] == "not_found"


def test_the_status_api_accepts_uploads_and_streams_progress(e2e, room_photos):
    import uuid as _uuid

    boundary = _uuid.uuid4().hex
    photo = room_photos[4].read_bytes()
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="style"\r\n\r\nrustic\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n'
        f'{{"seed": 3}}\r\n'.encode(),
        (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="room.jpg"'
         f'\r\nContent-Type: image/jpeg\r\n\r\n').encode() + photo + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    request = urllib.request.Request(
        e2e.status_url + "/jobs", data=b"".join(parts), method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **e2e.auth()})
    with urllib.request.urlopen(request) as response:
        assert response.status == 202
        job_id = json.loads(response.read())["job_id"]

    events_url = urllib.request.Request(f"{e2e.status_url}/jobs/{job_id}/events",
                                        headers=e2e.auth())
    with urllib.request.urlopen(events_url, timeout=180) as stream:
        text = stream.read().decode()
    events = [line[len("event: "):] for line in text.splitlines() if line.startswith("event: ")]
    assert events[-1] == "done"
    final = json.loads([line for line in text.splitlines() if line.startswith("data: ")][-1][6:])
    assert final["result"]["seed"] == 3
    # Stored under the caller's tenant (the default one, the stack's own key: no prefix).
    stored = e2e.s3.get_object(Bucket="restyle", Key=f"uploads/{job_id}/room.jpg")["Body"].read()
    assert stored == photo


def test_health_and_metrics(e2e):
    status, body = e2e.get("/healthz")
    assert status == 200 and body["status"] == "ok"
    with urllib.request.urlopen(e2e.status_url + "/metrics") as response:
        text = response.read().decode()
    assert "restyle_stage_seconds_bucket" in text
    assert 'restyle_jobs_finished_total{code="",status="done"}' in text


def test_a_local_file_under_a_configured_root_is_accepted(e2e):
    path = e2e.local_uploads / "room.jpg"
    path.write_bytes(jpeg_bytes(Image.new("RGB", (96, 80), (120, 90, 60))))
    job_id = new_id("file")
    e2e.publish({"job_id": job_id, "pipeline": "room_makeover", "image": path.as_uri(),
                 "style": "minimalist"})
    assert e2e.result(job_id)["status"] == "done"
