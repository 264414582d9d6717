"""restyle on a secured Kafka: the embedded Apache Kafka listens with SASL_SSL only (TLS with a
private CA and client certificates, SCRAM and PLAIN users). Every Kafka client restyle runs
connects with the RESTYLE_KAFKA_* settings: the workers (faust, the key ring, topic creation),
the CLI (`keys create`, `submit --wait`) and the bucket watcher (a photo dropped into incoming/
comes back under generated/). Wrong credentials are refused by the broker."""
from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time

import pytest
from aiokafka.errors import KafkaConnectionError
from PIL import Image

from pydantic import SecretStr

from streams.cli.client import publish_one
from streams.core.settings import Settings
from streams.stack.apache_kafka import available, start_apache_kafka
from streams.stack.embedded import free_port
from streams.stack.kafka_security import SecureListener
from streams.stack.up import RestyleStack

CLI = [sys.executable, "-m", "streams.cli.main"]
USER, PASSWORD = "restyle", "restyle-scram-secret"


@pytest.fixture(scope="module")
def secured(tmp_path_factory, tiny_models):
    why_not = available()
    if why_not:
        pytest.skip(f"Apache Kafka cannot run here: {why_not}")
    root = tmp_path_factory.mktemp("secured-kafka")
    listener = SecureListener(root / "tls", users={USER: PASSWORD})
    broker, bootstrap = start_apache_kafka(root / "kafka", root / "logs", secure=listener)
    env = {"RESTYLE_KAFKA_BOOTSTRAP": bootstrap, "RESTYLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "RESTYLE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
           "RESTYLE_KAFKA_SASL_USERNAME": USER, "RESTYLE_KAFKA_SASL_PASSWORD": PASSWORD,
           "RESTYLE_KAFKA_SSL_CAFILE": str(listener.cafile),
           "RESTYLE_KAFKA_SSL_CERTFILE": str(listener.client_certfile),
           "RESTYLE_KAFKA_SSL_KEYFILE": str(listener.client_keyfile)}
    settings = Settings(state_dir=root / "state", web_port=free_port(), **{
        name.removeprefix("RESTYLE_").lower(): value for name, value in env.items()})
    stack = RestyleStack(settings, models=str(tiny_models), trainer_workers=0, extra_env={
        **env, "HF_HUB_OFFLINE": "1", "RESTYLE_DEFAULT_STEPS": "2",
        "RESTYLE_DEFAULT_WIDTH": "64", "RESTYLE_DEFAULT_HEIGHT": "64",
        "RESTYLE_CONDITION_MAX_SIDE": "64", "RESTYLE_BUCKET_WATCH_INTERVAL_S": "0.5"})
    try:
        stack.start()
        yield stack, settings, env, listener
    finally:
        stack.stop()
        broker.stop()


def cli(stack, env, *argv, timeout=240):
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env, "HF_HUB_OFFLINE": "1",
                               "RESTYLE_STATE_DIR": str(stack.state_dir)})


def test_workers_cli_and_bucket_watcher_run_over_sasl_ssl(secured, room_photos):
    stack, settings, env, _ = secured
    # The CLI publishes over SASL_SSL and follows the job through the status API.
    done = cli(stack, env, "submit", str(room_photos[7]), "--style", "modern", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": done" in done.stdout
    # A key created over SASL_SSL is read by the workers' key ring over SASL_SSL.
    created = cli(stack, env, "keys", "create", "--tenant", "secure-co")
    assert created.returncode == 0, created.stderr
    status = cli(stack, {**env, "RESTYLE_API_KEY": created.stdout.strip()}, "status", "none")
    assert status.returncode == 2 and "no job 'none'" in status.stderr

    # The bucket watcher publishes over SASL_SSL too.
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.endpoints["s3_endpoint"],
                      aws_access_key_id=stack.endpoints["s3_access_key"],
                      aws_secret_access_key=stack.endpoints["s3_secret_key"],
                      region_name="us-east-1")
    photo = io.BytesIO()
    Image.open(room_photos[8]).convert("RGB").resize((96, 64)).save(photo, format="PNG")
    s3.put_object(Bucket=settings.s3_bucket, Key="incoming/secured.png", Body=photo.getvalue())
    deadline = time.monotonic() + 240
    while True:
        listed = s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix="generated/secured.png/")
        if any(item["Key"].endswith("/0.png") for item in listed.get("Contents", [])):
            break
        assert time.monotonic() < deadline, "no generated image from the watched bucket"
        time.sleep(1)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_every_sasl_mechanism_the_settings_offer_connects(secured, mechanism):
    _, settings, _, _ = secured
    configured = settings.model_copy(update={"kafka_sasl_mechanism": mechanism})
    asyncio.run(publish_one(configured, "restyle.uploads-probe", "probe", b"{}"))


def test_wrong_credentials_and_a_missing_client_certificate_are_refused(secured):
    _, settings, _, _ = secured
    for wrong in (settings.model_copy(update={"kafka_sasl_password": SecretStr("guess")}),
                  settings.model_copy(update={"kafka_ssl_certfile": None,
                                              "kafka_ssl_keyfile": None})):
        with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
            asyncio.run(publish_one(wrong, "restyle.uploads-probe", "probe", b"{}",
                                    request_timeout_ms=5000))
