"""Chained (Tansu here), the worker that admits a job tracks its start in-process, and the
worker that finishes it tracks its end, where it owns the job's partition of job-events: no
hop through the topic on the job's path. The events are on restyle.job-events all the same, in
their place, for the topic's other readers. Split (Apache Kafka here), the tracker reads them
from the topic. Either way a job is tracked once and ends once."""
from __future__ import annotations

import json
import uuid

import pytest

HANDLED_IN_PROCESS = ("restyle-handled-in-process", b"1")


@pytest.fixture(scope="module")
def room_uri(e2e, room_photos) -> str:
    return e2e.put_object("incoming/tracked-room.jpg", room_photos[2].read_bytes())


def job_events(e2e, job_id: str) -> list:
    return e2e.collector.matching("restyle.job-events", lambda m: m.key() == job_id.encode())


def kind(record) -> str:
    return json.loads(record.value())["kind"]


def test_a_jobs_start_and_end_are_tracked_where_it_runs_and_still_told(e2e, room_uri):
    job_id = f"tracked-{uuid.uuid4().hex[:10]}"
    e2e.publish({"job_id": job_id, "pipeline": "room_makeover", "image": room_uri,
                 "style": "industrial"}, key=job_id.encode())  # keyed by id, murmur2

    assert e2e.result(job_id)["status"] == "done"
    status, job = e2e.get(f"/jobs/{job_id}")
    assert status == 200 and job["status"] == "done"
    assert set(job["result"]["timings_ms"]) >= {"analyze", "embed", "compose", "render"}

    told = job_events(e2e, job_id)
    kinds = [kind(m) for m in told]
    assert kinds.count("submitted") == 1 and kinds.count("completed") == 1
    assert kinds[0] == "submitted" and kinds.index("completed") > kinds.index("status")
    in_process = [kind(m) for m in told if HANDLED_IN_PROCESS in (m.headers() or [])]
    assert in_process == (["submitted", "completed"] if e2e.broker == "tansu" else [])
    assert len(e2e.results(job_id)) == 1


def test_an_upload_keyed_otherwise_is_tracked_through_the_topic(e2e, room_uri):
    """Its upload sits on a partition other than its job's: the tracker that owns the job
    reads its start from the topic, as when split."""
    job_id = f"unkeyed-{uuid.uuid4().hex[:10]}"
    e2e.publish({"job_id": job_id, "pipeline": "room_makeover", "image": room_uri,
                 "style": "rustic"}, key=f"elsewhere-{job_id}".encode())

    assert e2e.result(job_id)["status"] == "done"
    submitted = [m for m in job_events(e2e, job_id) if kind(m) == "submitted"]
    assert len(submitted) == 1
    # (Unless its other key happens to share the job's partition.)
    from streams.core.copartition import key_partition

    same = key_partition(f"elsewhere-{job_id}".encode(), e2e.settings.partitions) == \
        key_partition(job_id.encode(), e2e.settings.partitions)
    assert (HANDLED_IN_PROCESS in (submitted[0].headers() or [])) == \
        (same and e2e.broker == "tansu")
    assert len(e2e.results(job_id)) == 1
