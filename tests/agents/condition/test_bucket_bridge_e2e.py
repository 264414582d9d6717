"""AWS users whose buckets notify SQS: a real S3 event record made by a real S3 server (moto:
the bucket notifies an SQS queue, the test event first), moved to Kafka by `restyle bridge sqs`,
drives a conditioned generation whose result lands back in that bucket."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import boto3
import pytest

from streams.stack.embedded import free_port
from tests.agents.background.test_background_e2e import png
from tests.agents.background.test_stages import skimage_photo
from tests.conftest import TopicCollector

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def moto_url():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except Exception:
            assert process.poll() is None and time.monotonic() < deadline, "moto did not start"
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def moto_stack(moto_url, tiny_models, tmp_path_factory, request):
    from streams.core.settings import Settings
    from streams.stack.up import RestyleStack
    from tests.conftest import announce

    settings = Settings(state_dir=tmp_path_factory.mktemp("moto-stack"), web_port=free_port(),
                        s3_endpoint=moto_url, s3_access_key="testing", s3_secret_key="testing",
                        s3_bucket="photos")
    stack = RestyleStack(settings, models=str(tiny_models), trainer_workers=0, extra_env={
        "RESTYLE_DEFAULT_STEPS": "2", "RESTYLE_CONDITION_MAX_SIDE": "64",
        "RESTYLE_S3_BUCKET": "photos", "HF_HUB_OFFLINE": "1"})
    endpoints = stack.start()
    announce(request, f"[moto] S3 + SQS (moto server) at {moto_url}; broker "
                      f"{endpoints['kafka_bootstrap']} ({stack.broker})")
    yield stack, endpoints
    stack.stop()


def test_an_s3_notification_through_sqs_and_the_bridge_becomes_a_result(moto_url, moto_stack):
    stack, endpoints = moto_stack
    s3 = boto3.client("s3", endpoint_url=moto_url, **{
        "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
        "region_name": "us-east-1"})
    sqs = boto3.client("sqs", endpoint_url=moto_url, aws_access_key_id="testing",
                       aws_secret_access_key="testing", region_name="us-east-1")
    queue_url = sqs.create_queue(QueueName="photos-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket="photos", NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"],
                                 "Filter": {"Key": {"FilterRules": [
                                     {"Name": "prefix", "Value": "incoming/"}]}}}]})
    s3.put_object(Bucket="photos", Key="incoming/tiger sketch.png",
                  Body=png(skimage_photo("chelsea")), Metadata={"prompt": "a tiger, drawn"})

    collector = TopicCollector(endpoints["kafka_bootstrap"], ["restyle.results"],
                               stack.settings.partitions)
    try:
        env = {**os.environ, **CREDENTIALS, "RESTYLE_STATE_DIR": str(stack.state_dir)}
        bridged = subprocess.run(
            [sys.executable, "-m", "streams.cli.main", "bridge", "sqs", queue_url, "--endpoint-url",
             moto_url, "--once"], env=env, capture_output=True, text=True, timeout=120)
        assert bridged.returncode == 0, bridged.stdout + bridged.stderr
        # The s3:TestEvent the bucket sends first, and the object's record.
        assert "forwarded 2 of 2 messages; deleted 2 from SQS" in bridged.stdout
        left = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
        assert set(left["Attributes"].values()) == {"0"}

        found = collector.wait_for("restyle.results", lambda m: json.loads(m.value()).get(
            "pipeline") == "condition", 180)
        result = json.loads(found[0].value())
    finally:
        collector.close()
    assert result["status"] == "done", result
    assert result["result"]["source"]["key"] == "incoming/tiger sketch.png"  # decoded key
    assert result["result"]["prompt"] == "a tiger, drawn"
    assert [i["uri"] for i in result["result"]["images"]] == \
        ["s3://photos/generated/tiger sketch.png/0.png"]
    stored = s3.get_object(Bucket="photos", Key="generated/tiger sketch.png/0.png")
    assert stored["Metadata"]["source-key"] == "incoming/tiger sketch.png"
