"""What an operator watches: the consumer lag of every worker pool and the GPU queue depth on
/metrics (what KEDA scales on), job latency by pipeline and outcome, and JSON log lines."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
from aiokafka.errors import KafkaConnectionError
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.core.lag import group_lags
from streams.stack.embedded import free_port


def metrics(e2e) -> str:
    with urllib.request.urlopen(f"{e2e.stack.endpoints['status_url']}/metrics",
                                timeout=10) as response:
        return response.read().decode()


def samples(text: str, name: str) -> dict[str, float]:
    """name's samples: their label sets (as written) -> value."""
    return {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")}


def test_lag_is_what_a_group_has_not_committed(e2e):
    import asyncio

    bootstrap = e2e.stack.endpoints["kafka_bootstrap"]
    topic, group = f"lag-test-{uuid.uuid4().hex[:6]}", f"lag-test-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: its future needs it alive
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result()
    producer = Producer({"bootstrap.servers": bootstrap})
    for n in range(5):
        producer.produce(topic, f"record {n}".encode(), partition=0)
    producer.flush()
    committer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                          "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    committer.close()

    reading = group_lags(e2e.client_settings, {group: [topic]})
    if e2e.broker == "tansu":  # its committed-offsets answer is unreadable (README: Brokers)
        with pytest.raises(KafkaConnectionError):
            asyncio.run(reading)
        return
    lags = asyncio.run(reading)

    assert {(lag.partition, lag.committed, lag.records) for lag in lags} == \
        {(0, 2, 3), (1, None, 0)}


def test_metrics_show_each_pools_lag_the_gpu_queue_and_job_latency(e2e, room_photos):
    job_id = f"metrics-{uuid.uuid4().hex[:8]}"
    e2e.publish({"job_id": job_id, "pipeline": "room_makeover", "style": "modern",
                 "image": e2e.put_object("incoming/metrics.jpg", room_photos[5].read_bytes())},
                key=job_id.encode())
    assert e2e.result(job_id)["status"] == "done"
    text = metrics(e2e)
    finished = samples(text, "restyle_job_seconds_count")
    assert finished.get('restyle_job_seconds_count{pipeline="room_makeover",status="done"}',
                        0) >= 1
    if e2e.broker == "tansu":  # no lag figures there (README: Brokers)
        assert samples(text, "restyle_consumer_lag") == {}
        return
    deadline = time.monotonic() + 60  # the lag is read every RESTYLE_LAG_INTERVAL_S, and the
    while True:                       # pools commit every RESTYLE_COMMIT_INTERVAL_S
        text = metrics(e2e)
        lag = samples(text, "restyle_consumer_lag")
        # (labels are written in name order: group, partition, topic)
        if any('group="restyle",' in labels and 'topic="restyle.uploads"' in labels
               for labels in lag) or time.monotonic() > deadline:
            break
        time.sleep(1)
    groups = {labels.split('group="')[1].split('"')[0] for labels in lag}
    assert {"restyle", "restyle-gpu", "restyle-trainer"} <= groups
    assert all(value >= 0 for value in lag.values())
    assert any('topic="restyle.uploads"' in labels for labels in lag)
    depth = samples(text, "restyle_gpu_queue_depth")
    assert set(depth) == {'restyle_gpu_queue_depth{topic="restyle.render-requests"}',
                          'restyle_gpu_queue_depth{topic="restyle.render-requests.batch"}'}


def test_a_worker_logs_json_lines_when_asked(e2e, tmp_path):
    port = free_port()
    env = {**os.environ, **e2e.stack.env, "RESTYLE_LOG_FORMAT": "json",
           "RESTYLE_STATE_DIR": str(tmp_path)}
    worker = subprocess.Popen([sys.executable, "-m", "streams.cli.main", "worker", "trainer",
                               "--web-port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=2):
                    break
            except OSError:
                assert worker.poll() is None, worker.stderr.read()
                time.sleep(0.5)
        worker.send_signal(signal.SIGTERM)
        _, said = worker.communicate(timeout=90)
    finally:
        if worker.poll() is None:
            worker.kill()
    lines = [line for line in said.splitlines() if line.strip()]
    assert len(lines) >= 5
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"].startswith(("faust", "restyle", "mode")) for r in records)
