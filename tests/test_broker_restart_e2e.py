"""The broker dies under `restyle up` and nothing is lost: with Tansu keeping its topics in S3
(RESTYLE_EMBEDDED_BROKER_STORAGE=s3) the supervisor starts it again, and every job submitted
before, during and after the outage ends done, exactly once."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
import uuid

import pytest
from PIL import Image

from streams.stack.embedded import free_port
from tests.conftest import TopicCollector
from tests.streams.cli.test_cli import CLI, alive, children, cli_env, wait_until_up

# Two to three minutes: a stack of its own, a broker killed and started again.
pytestmark = pytest.mark.slow


def test_a_killed_broker_that_keeps_its_topics_is_restarted_and_no_job_is_lost(
        tmp_path, tiny_models):
    import boto3
    from confluent_kafka import Producer

    process = subprocess.Popen(
        [*CLI, "up", "--models", str(tiny_models), "--state-dir", str(tmp_path),
         "--trainer-workers", "0"],
        env=cli_env(RESTYLE_WEB_PORT=str(free_port()), RESTYLE_EMBEDDED_BROKER_STORAGE="s3",
                    RESTYLE_DEFAULT_STEPS="2", RESTYLE_DEFAULT_WIDTH="64",
                    RESTYLE_DEFAULT_HEIGHT="64", RESTYLE_CONDITION_MAX_SIDE="64"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    collector = None
    try:
        endpoints = wait_until_up(process, tmp_path / "endpoints.json")
        assert endpoints["broker"] == "tansu (embedded, topics in s3://restyle-broker/)"
        s3 = boto3.client("s3", endpoint_url=endpoints["s3_endpoint"],
                          aws_access_key_id=endpoints["s3_access_key"],
                          aws_secret_access_key=endpoints["s3_secret_key"],
                          region_name="us-east-1")
        photo = io.BytesIO()
        Image.radial_gradient("L").convert("RGB").resize((64, 64)).save(photo, format="PNG")
        s3.put_object(Bucket="restyle", Key="incoming/broker.png", Body=photo.getvalue())
        # The broker's own topics are objects in its bucket.
        assert s3.list_objects_v2(Bucket="restyle-broker").get("KeyCount", 0) > 0

        # A producer as an upstream system would run it: it waits out a broker outage
        # (message.timeout.ms) rather than dropping what it was given.
        producer = Producer({"bootstrap.servers": endpoints["kafka_bootstrap"],
                             "log_level": 2, "partitioner": "murmur2_random",
                             "message.timeout.ms": 120000})
        acknowledged: list = []

        def submit(job_id: str) -> None:
            producer.produce("restyle.uploads", json.dumps({
                "job_id": job_id, "pipeline": "condition",
                "image": "s3://restyle/incoming/broker.png", "params": {"seed": 3}}).encode(),
                key=job_id.encode(), on_delivery=lambda error, _: acknowledged.append(error))

        collector = TopicCollector(endpoints["kafka_bootstrap"], ["restyle.results"], 4)
        before = [f"before-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        for job_id in before:
            submit(job_id)
        producer.flush(60)
        collector.wait_for("restyle.results", lambda m: m.key() == before[0].encode(), 180)

        [broker] = [pid for pid, argv in children(process.pid) if "tansu" in argv]
        os.kill(broker, signal.SIGKILL)
        during = [f"during-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        for job_id in during:
            submit(job_id)
        deadline = time.monotonic() + 60
        while not [pid for pid, argv in children(process.pid)
                   if "tansu" in argv and pid != broker]:
            assert process.poll() is None and time.monotonic() < deadline, "no restart"
            time.sleep(0.5)
        assert producer.flush(120) == 0 and acknowledged == [None] * 6
        after = [f"after-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        for job_id in after:
            submit(job_id)
        producer.flush(60)

        for job_id in before + during + after:
            [result] = collector.wait_for("restyle.results",
                                          lambda m, j=job_id: m.key() == j.encode(), 240)
            assert json.loads(result.value())["status"] == "done", result.value()
        time.sleep(3)  # a second result, had a job run twice
        for job_id in before + during + after:
            assert len(collector.matching("restyle.results",
                                          lambda m, j=job_id: m.key() == j.encode())) == 1
        started = [pid for pid, _ in children(process.pid)]
    finally:
        if collector is not None:
            collector.close()
        process.send_signal(signal.SIGTERM)
        returned = process.wait(120)
    output = process.stdout.read()
    assert returned == 0, output
    assert "tansu exited with code -9" in output and "restarted tansu" in output
    assert not [pid for pid in started if alive(pid)]
