"""Conditioned generation end to end on the embedded stack: a photo dropped into incoming/ (the
stack's watcher notices it, as S3 would notify), a MinIO-shaped event published with a plain
Kafka client, and the bad cases — malformed records, deleted objects, the pipeline's own
outputs, objects no rule matches."""
from __future__ import annotations

import io
import json
import re
import time
import urllib.request
import uuid

import numpy as np
from PIL import Image

from agents.condition import bucket_events
from tests.agents.background.test_background_e2e import png
from tests.agents.background.test_stages import skimage_photo


def result_for(e2e, job_id: str, timeout_s: float = 180) -> dict:
    return e2e.result(job_id, timeout_s)


def cpu_metric(e2e, outcome: str) -> float:
    with urllib.request.urlopen(e2e.status_url + "/metrics") as response:
        text = response.read().decode()
    found = re.search(rf'^restyle_bucket_objects_total{{outcome="{outcome}"}} ([0-9.e+]+)$',
                      text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def aws_record(bucket: str, key: str, etag: str, name: str = "ObjectCreated:Put") -> dict:
    return {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": name,
                         "s3": {"bucket": {"name": bucket},
                                "object": {"key": key, "size": 100, "eTag": etag}}}]}


def test_a_photo_dropped_into_incoming_comes_back_under_generated(e2e):
    name = f"drop-{uuid.uuid4().hex[:8]}"
    photo = skimage_photo("astronaut")
    e2e.s3.put_object(Bucket=e2e.bucket, Key=f"incoming/{name}.png", Body=png(photo),
                      Metadata={"prompt": "an astronaut as a hand drawn sketch"})
    etag = e2e.s3.head_object(Bucket=e2e.bucket, Key=f"incoming/{name}.png")["ETag"]
    job_id = bucket_events.job_id_for(bucket_events.CreatedObject(
        e2e.bucket, f"incoming/{name}.png", "ObjectCreated:Put", etag=etag.strip('"')))
    result = result_for(e2e, job_id)
    assert result["status"] == "done", result
    found = result["result"]
    assert found["pipeline"] == "condition" and found["conditioning"] == "canny"
    assert found["prompt"] == "an astronaut as a hand drawn sketch"
    assert found["source"]["key"] == f"incoming/{name}.png" and found["rule"] == "default"
    assert [i["uri"] for i in found["images"]] == [f"s3://restyle/generated/{name}.png/0.png"]
    assert found["control_map"] == f"s3://restyle/generated/{name}.png/canny.png"

    stored = e2e.s3.get_object(Bucket=e2e.bucket, Key=f"generated/{name}.png/0.png")
    assert Image.open(io.BytesIO(stored["Body"].read())).size == (64, 64)
    metadata = stored["Metadata"]
    assert metadata["source-key"] == f"incoming/{name}.png"
    assert metadata["prompt"] == "an astronaut as a hand drawn sketch"
    assert metadata["seed"] == str(found["seed"]) and metadata["controlnet-model"]
    # The conditioning map is saved next to the result: canny edges of the resized photo.
    edges = np.asarray(Image.open(io.BytesIO(e2e.s3.get_object(
        Bucket=e2e.bucket, Key=f"generated/{name}.png/canny.png")["Body"].read())))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) <= {0, 255}
    assert (edges > 0).any()


def drop(e2e, key: str, photo) -> dict:
    """Put a photo under incoming/ (the watcher notices it) and wait for its job's result."""
    e2e.s3.put_object(Bucket=e2e.bucket, Key=key, Body=png(photo))
    etag = e2e.s3.head_object(Bucket=e2e.bucket, Key=key)["ETag"]
    return result_for(e2e, bucket_events.job_id_for(bucket_events.CreatedObject(
        e2e.bucket, key, "ObjectCreated:Put", etag=etag.strip('"'))))


def test_a_new_upload_to_a_key_is_rendered_again_and_a_namesake_gets_its_own_output(e2e):
    name = f"again-{uuid.uuid4().hex[:8]}"
    first = drop(e2e, f"incoming/{name}.png", skimage_photo("astronaut").resize((96, 64)))
    output = f"generated/{name}.png/0.png"
    before = e2e.s3.get_object(Bucket=e2e.bucket, Key=output)["Body"].read()
    # The same key, new content: a new job, rendered (not answered with the old manifest).
    second = drop(e2e, f"incoming/{name}.png", skimage_photo("chelsea").resize((96, 64)))
    assert second["job_id"] != first["job_id"] and second["status"] == "done"
    assert e2e.s3.get_object(Bucket=e2e.bucket, Key=output)["Body"].read() != before
    manifest = e2e.s3.get_object(Bucket=e2e.bucket, Key=f"generated/{name}.png/render.json")
    assert json.loads(manifest["Body"].read())["job_id"] == second["job_id"]
    # name.jpg beside name.png: its own job and its own outputs.
    third = drop(e2e, f"incoming/{name}.jpg", skimage_photo("coffee").resize((96, 64)))
    assert [i["uri"] for i in third["result"]["images"]] == \
        [f"s3://restyle/generated/{name}.jpg/0.png"]


def test_a_non_ascii_key_is_kept_intact_and_its_metadata_quoted(e2e):
    import urllib.parse

    name = f"café-東京-{uuid.uuid4().hex[:6]}"
    found = drop(e2e, f"incoming/{name}.png", skimage_photo("coffee").resize((96, 64)))
    assert found["status"] == "done", found
    assert found["result"]["source"]["key"] == f"incoming/{name}.png"
    assert [i["uri"] for i in found["result"]["images"]] == \
        [f"s3://restyle/generated/{name}.png/0.png"]
    stored = e2e.s3.get_object(Bucket=e2e.bucket, Key=f"generated/{name}.png/0.png")
    # S3 metadata is ASCII: the key is stored URL-quoted and reads back whole.
    assert urllib.parse.unquote(stored["Metadata"]["source-key"]) == f"incoming/{name}.png"


def test_a_minio_event_on_the_topic_drives_a_job(e2e):
    name = f"minio-{uuid.uuid4().hex[:8]}"
    e2e.put_object(f"incoming/{name}.png", png(skimage_photo("chelsea")))
    event = {"EventName": "s3:ObjectCreated:Put", "Key": f"{e2e.bucket}/incoming/{name}.png",
             "Records": [{"eventVersion": "2.0", "eventSource": "minio:s3",
                          "eventName": "s3:ObjectCreated:Put",
                          "s3": {"bucket": {"name": e2e.bucket},
                                 "object": {"key": f"incoming%2F{name}.png", "size": 1,
                                            "eTag": "minio-etag"}}}]}
    e2e.publish(event, key=f"{e2e.bucket}/incoming/{name}.png".encode(),
                topic="restyle.bucket-events")
    job_id = bucket_events.job_id_for(bucket_events.CreatedObject(
        e2e.bucket, f"incoming/{name}.png", "ObjectCreated:Put", etag="minio-etag"))
    result = result_for(e2e, job_id)
    assert result["status"] == "done", result
    assert result["result"]["source"]["event"] == "ObjectCreated:Put"


def test_bad_bucket_events_fail_clearly_or_go_to_the_dlq_and_loops_are_guarded(e2e):
    marker = uuid.uuid4().hex[:8]
    e2e.publish(b"{not json", key=f"bad-{marker}".encode(), topic="restyle.bucket-events")
    e2e.publish({"Records": [{"eventName": "ObjectCreated:Put"}]}, key=f"shape-{marker}".encode(),
                topic="restyle.bucket-events")
    letters = e2e.collector.wait_for("restyle.dlq", lambda m: m.key() in (
        f"bad-{marker}".encode(), f"shape-{marker}".encode()), 60, count=2)
    codes = sorted(dict(m.headers())["restyle-dlq-code"] for m in letters)
    assert codes == [b"invalid_json", b"schema_violation"]

    # An object deleted before its event is processed: a failed job that says so.
    gone = aws_record(e2e.bucket, f"incoming/gone-{marker}.png", "e1")
    e2e.publish(gone, topic="restyle.bucket-events")
    job_id = bucket_events.job_id_for(bucket_events.CreatedObject(
        e2e.bucket, f"incoming/gone-{marker}.png", "ObjectCreated:Put", etag="e1"))
    result = result_for(e2e, job_id, 60)
    assert result["status"] == "failed" and result["error"]["code"] == "object_not_found"
    assert "deleted before it could be processed" in result["error"]["message"]

    # A bytes-that-are-not-an-image object fails in the pipeline, and the worker carries on.
    e2e.put_object(f"incoming/text-{marker}.png", b"just text")
    corrupt = aws_record(e2e.bucket, f"incoming/text-{marker}.png", "e2")
    e2e.publish(corrupt, topic="restyle.bucket-events")
    job_id = bucket_events.job_id_for(bucket_events.CreatedObject(
        e2e.bucket, f"incoming/text-{marker}.png", "ObjectCreated:Put", etag="e2"))
    assert result_for(e2e, job_id, 60)["error"]["code"] == "not_an_image"

    # The pipeline's own output and an object no rule matches start nothing.
    own, unmatched = cpu_metric(e2e, "own_output"), cpu_metric(e2e, "unmatched")
    ignored = cpu_metric(e2e, "ignored")
    e2e.publish(aws_record(e2e.bucket, f"generated/x-{marker}/0.png", "e3"),
                topic="restyle.bucket-events")
    e2e.publish(aws_record(e2e.bucket, f"elsewhere/{marker}.png", "e4"),
                topic="restyle.bucket-events")
    e2e.publish({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": e2e.bucket},
                topic="restyle.bucket-events")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (cpu_metric(e2e, "own_output") > own and cpu_metric(e2e, "unmatched") > unmatched
                and cpu_metric(e2e, "ignored") > ignored):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the loop guard, the unmatched and the test event were not counted")
    for key, etag in ((f"generated/x-{marker}/0.png", "e3"), (f"elsewhere/{marker}.png", "e4")):
        job_id = bucket_events.job_id_for(bucket_events.CreatedObject(
            e2e.bucket, key, "ObjectCreated:Put", etag=etag))
        assert e2e.get(f"/jobs/{job_id}")[0] == 404


def test_a_condition_upload_with_depth_and_segmentation_maps(e2e):
    photo_uri = e2e.put_object(f"cond/{uuid.uuid4().hex[:8]}.png", png(skimage_photo("coffee")))
    jobs = {}
    for kind in ("depth", "seg"):
        job_id = f"cond-{kind}-{uuid.uuid4().hex[:8]}"
        e2e.publish({"job_id": job_id, "pipeline": "condition", "image": photo_uri,
                     "params": {"conditioning": kind, "prompt": "a watercolor kitchen",
                                "width": 96, "height": 64, "fit": "cover", "seed": 8},
                     "output": f"s3://{e2e.bucket}/cond-out/{job_id}/"}, key=job_id.encode())
        jobs[kind] = job_id
    for kind, job_id in jobs.items():
        result = result_for(e2e, job_id)
        assert result["status"] == "done", result
        found = result["result"]
        assert found["control_map"] == f"s3://restyle/cond-out/{job_id}/{kind}.png"
        assert (found["width"], found["height"], found["seed"]) == (96, 64, 8)
        body = e2e.s3.get_object(Bucket=e2e.bucket, Key=f"cond-out/{job_id}/0.png")["Body"]
        assert Image.open(io.BytesIO(body.read())).size == (96, 64)
    bad = f"cond-bad-{uuid.uuid4().hex[:8]}"
    e2e.publish({"job_id": bad, "pipeline": "condition", "image": photo_uri,
                 "params": {"canny_low": 300, "canny_high": 100}}, key=bad.encode())
    result = result_for(e2e, bad, 60)
    assert result["status"] == "failed" and result["error"]["code"] == "schema_violation"
