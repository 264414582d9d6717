"""What restyle publishes on the wire matches the JSON Schemas it publishes
(schemas/contracts/topics/): a consumer that validates records with them accepts every job event
and result of a real job, its failure included."""
from __future__ import annotations

import json
import uuid

from jsonschema import Draft202012Validator

from streams.cli.contracts import CONTRACTS_DIR


def validator(topic: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((CONTRACTS_DIR / "topics" / f"{topic}.json")
                                           .read_text()))


def test_job_events_and_results_on_the_wire_match_the_published_schemas(e2e, room_photos):
    done, failed = f"wire-{uuid.uuid4().hex[:8]}", f"wire-{uuid.uuid4().hex[:8]}"
    uri = e2e.put_object("incoming/wire.jpg", room_photos[3].read_bytes())
    upload = {"job_id": done, "pipeline": "room_makeover", "image": uri, "style": "modern"}
    assert list(validator("restyle.uploads").iter_errors(upload)) == []
    e2e.publish(upload, key=done.encode())
    e2e.publish({"job_id": failed, "pipeline": "room_makeover", "image": "s3://restyle/absent.jpg",
                 "style": "modern"}, key=failed.encode())
    assert e2e.result(done)["status"] == "done"
    assert e2e.result(failed)["status"] == "failed"

    for topic in ("restyle.results", "restyle.job-events"):
        records = [json.loads(m.value()) for m in e2e.collector.matching(
            topic, lambda m: m.key() in (done.encode(), failed.encode()))]
        kinds = {r.get("kind", r.get("status")) for r in records}
        assert len(records) >= 2, topic
        problems = [f"{r.get('kind', r.get('status'))}: {e.message[:200]}"
                    for r in records for e in validator(topic).iter_errors(r)]
        assert problems == [], f"{topic} records ({kinds}) break the published schema"
