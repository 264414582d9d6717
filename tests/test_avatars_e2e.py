"""Personalized avatars end to end on the embedded stack with tiny models: a person's photos in,
the real face detector's verdict on each, a LoRA adapter trained by the trainer worker and
registered, then images generated with it by the GPU worker; bad requests end `failed` with
their causes; a trainer killed mid-run resumes from its last checkpoint."""
from __future__ import annotations

import io
import json
import signal
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from tests import faces
from tests.forms import multipart


TRAIN = {"steps": 12, "resolution": 64, "rank": 4, "class_images": 2, "checkpoint_every": 5,
         "learning_rate": 5e-3,
         "batch_size": 1}


def upload(e2e, folder: str, photos: dict[str, Image.Image]) -> str:
    """The photos as JPEGs under one prefix in the stack's bucket; returns the prefix."""
    for name, photo in photos.items():
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=92)
        e2e.put_object(f"avatars-in/{folder}/{name}.jpg", buffer.getvalue())
    return f"s3://{e2e.bucket}/avatars-in/{folder}/"


def events(e2e, job_id: str) -> list[dict]:
    return [json.loads(m.value()) for m in e2e.collector.matching(
        "restyle.job-events", lambda m: m.key() == job_id.encode())]


def image_at(e2e, uri: str) -> np.ndarray:
    bucket, key = uri[5:].split("/", 1)
    body = e2e.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.int16)


def generate(e2e, model_id: str, **params) -> dict:
    job_id = f"avatar-gen-{uuid.uuid4().hex[:8]}"
    e2e.publish({"job_id": job_id, "pipeline": "avatar_generate", "model_id": model_id,
                 "prompt": "a portrait of {subject}, oil painting",
                 "params": {"seed": 3, "steps": 2, "width": 64, "height": 64, **params}},
                key=job_id.encode())
    return e2e.result(job_id, 240)


def test_photos_in_an_adapter_out_then_images_of_that_person(e2e):
    photos = {**faces.portrait_set(), "resaved": faces.resaved_copy(),
              "cat": faces.not_faces()["chelsea"], "friends": faces.group_photo()}
    prefix = upload(e2e, "eileen", photos)
    job_id = f"avatar-{uuid.uuid4().hex[:8]}"
    e2e.publish({"job_id": job_id, "pipeline": "avatar_train", "images": [prefix],
                 "subject": "zqkv", "class_word": "woman", "params": TRAIN},
                key=job_id.encode())

    outcome = e2e.result(job_id, 300)
    assert outcome["status"] == "done", outcome.get("error")
    trained = outcome["result"]
    assert trained["model_id"] == job_id and trained["trigger"] == "zqkv woman"
    assert trained["steps"] == 12 and trained["resumed_from"] == 0
    assert len(trained["photos"]) == 12
    rejected = {r["image"].rsplit("/", 1)[-1]: r["code"] for r in trained["rejected"]}
    assert rejected == {"cat.jpg": "no_face", "friends.jpg": "many_faces",
                        "resaved.jpg": "duplicate"}
    assert image_at(e2e, trained["photos"][0]).shape == (64, 64, 3)  # the face crops are kept
    bucket, key = trained["adapter"][5:].split("/", 1)
    assert key.endswith(f"models/{job_id}/adapter/pytorch_lora_weights.safetensors")
    assert e2e.s3.head_object(Bucket=bucket, Key=key)["ContentLength"] > 0
    progress = [e["progress"] for e in events(e2e, job_id) if e.get("progress")]
    assert progress[-1]["step"] == 12 and progress[-1]["total"] == 12
    assert all(p["loss"] is not None for p in progress)
    assert "training" in {e.get("status") for e in events(e2e, job_id)}

    with_adapter = generate(e2e, job_id)
    assert with_adapter["status"] == "done", with_adapter.get("error")
    assert with_adapter["result"]["prompt"] == "a portrait of zqkv woman, oil painting"
    base_only = generate(e2e, job_id, lora_scale=0.0)  # the same seed, the adapter off
    person = image_at(e2e, with_adapter["result"]["images"][0]["uri"])
    base = image_at(e2e, base_only["result"]["images"][0]["uri"])
    assert person.shape == base.shape == (64, 64, 3)
    assert np.abs(person - base).mean() > 1.0


@pytest.mark.usefixtures("first_broker_only")
def test_too_few_usable_photos_fail_the_job_naming_each_rejected_one(e2e):
    photos = {**faces.not_faces(), "me": faces.astronaut()}
    prefix = upload(e2e, "few", photos)
    e2e.put_object("avatars-in/few/broken.png", b"\x89PNG\r\n\x1a\nnot really")
    job_id = f"avatar-few-{uuid.uuid4().hex[:8]}"
    e2e.publish({"job_id": job_id, "pipeline": "avatar_train", "images": [prefix],
                 "params": TRAIN}, key=job_id.encode())
    outcome = e2e.result(job_id, 180)
    assert outcome["status"] == "failed"
    error = outcome["error"]
    assert error["code"] == "too_few_faces"
    assert "1 usable photo(s)" in error["message"] and "at least 8" in error["message"]
    for name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg"):
        assert f"{name}: no face was found" in error["message"]
    assert "broken.png is not an image" in error["message"]


@pytest.mark.usefixtures("first_broker_only")
def test_an_unknown_model_fails_generation_with_model_not_found(e2e):
    outcome = generate(e2e, "nobody-trained-this")
    assert outcome["status"] == "failed"
    assert outcome["error"]["code"] == "model_not_found"
    assert "nobody-trained-this" in outcome["error"]["message"]


def long_training(e2e, folder: str, steps: int, until_checkpoint: int) -> str:
    """Start a training of `steps` steps with a checkpoint every 20; return its job id once
    the checkpoint at step `until_checkpoint` is written."""
    prefix = upload(e2e, folder, faces.portrait_set())
    job_id = f"avatar-{folder}-{uuid.uuid4().hex[:8]}"
    e2e.publish({"job_id": job_id, "pipeline": "avatar_train", "images": [prefix],
                 "params": {**TRAIN, "steps": steps, "checkpoint_every": 20}},
                key=job_id.encode())
    e2e.collector.wait_for("restyle.job-events", lambda m: m.key() == job_id.encode() and
                           (json.loads(m.value()).get("stage") or "") ==
                           f"checkpoint at step {until_checkpoint}", 300)
    return job_id


@pytest.mark.usefixtures("first_broker_only")
def test_a_trainer_killed_mid_run_resumes_from_its_last_checkpoint(e2e):
    # Killed at its step-40 checkpoint (at once: the kill cannot miss the run) with 40 steps
    # to go.
    job_id = long_training(e2e, "resume", steps=80, until_checkpoint=40)
    stack = e2e.stack
    trainer = next(s for s in stack.stack.services if s.name.startswith("trainer"))
    trainer.process.send_signal(signal.SIGKILL)
    trainer.process.wait(10)
    stack.stack.services.remove(trainer)
    replacement = stack.start_worker("trainer", trainer.port, trainer.name)
    stack.wait_healthy([replacement.port], 180)

    outcome = e2e.result(job_id, 600)
    assert outcome["status"] == "done", outcome.get("error")
    resumed_from = outcome["result"]["resumed_from"]
    assert resumed_from >= 40 and resumed_from % 20 == 0
    assert outcome["result"]["steps"] == 80
    assert len(e2e.results(job_id)) == 1
    # Between the kill and the resumption it waited for a trainer again, and said so (the
    # replacement announced the request it took over).
    told = [json.loads(m.value()) for m in e2e.collector.wait_for(
        "restyle.job-events", lambda m: m.key() == job_id.encode() and
        json.loads(m.value())["kind"] == "requeued", 60)]
    requeued = [e["queue"]["topic"] for e in told]
    assert requeued and set(requeued) == {"restyle.train-requests"}


def jpeg(photo: Image.Image) -> bytes:
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.mark.usefixtures("first_broker_only")
def test_over_http_a_tenant_trains_generates_lists_and_deletes_its_own_model(e2e):
    tenant, other = "portraits", "someone-else"
    body, headers = multipart({f"{name}.jpg": jpeg(photo)
                               for name, photo in faces.portrait_set().items()},
                              {"class_word": "woman", "params": json.dumps(TRAIN)})
    status, answer = e2e.request("POST", "/avatars", body, headers, tenant=tenant)
    assert status == 202, answer
    model_id = answer["model_id"]
    assert model_id.startswith(f"{tenant}:") and answer["job_id"] == model_id
    assert e2e.result(model_id, 300)["status"] == "done"

    status, listed = e2e.get("/models", tenant=tenant)
    assert status == 200 and [m["model_id"] for m in listed["models"]] == [model_id]
    assert listed["models"][0]["photos"] == 12 and "photo_hashes" not in listed["models"][0]
    short_id = model_id.split(":", 1)[1]
    assert e2e.get(f"/models/{short_id}", tenant=tenant)[1]["model_id"] == model_id
    # Another tenant sees nothing of it, exactly as if it did not exist.
    assert model_id not in [m["model_id"] for m in e2e.get("/models", tenant=other)[1]["models"]]
    assert e2e.get(f"/models/{model_id}", tenant=other)[0] == 404
    status, refused = e2e.post_json(f"/models/{model_id}/generate", {"prompt": "x"},
                                    tenant=other)
    assert status == 404 and refused["error"]["code"] == "model_not_found"

    status, answer = e2e.post_json(f"/models/{short_id}/generate", {
        "prompt": "{subject} on the moon", "params": {"seed": 1, "steps": 2, "width": 64,
                                                      "height": 64, "num_images": 2}},
        tenant=tenant)
    assert status == 202, answer
    generated = e2e.result(answer["job_id"], 240)
    assert generated["status"] == "done", generated.get("error")
    assert len(generated["result"]["images"]) == 2
    assert generated["result"]["images"][0]["uri"].startswith(
        f"s3://{e2e.bucket}/tenants/{tenant}/results/")

    status, deleted = e2e.request("DELETE", f"/models/{short_id}", tenant=tenant)
    assert status == 200 and deleted["status"] == "deleted" and deleted["files_deleted"] > 24
    listed = e2e.s3.list_objects_v2(Bucket=e2e.bucket,
                                    Prefix=f"tenants/{tenant}/models/{model_id}/")
    assert listed.get("KeyCount", 0) == 0  # the adapter and the face crops are gone
    uploads = e2e.s3.list_objects_v2(Bucket=e2e.bucket,
                                     Prefix=f"tenants/{tenant}/uploads/{model_id}/")
    assert uploads.get("KeyCount", 0) == 0  # and so are the photos uploaded for it
    status, gone = e2e.get(f"/models/{short_id}", tenant=tenant)
    assert status == 404 and "deleted" in gone["error"]["message"]
    after = f"avatar-after-delete-{uuid.uuid4().hex[:6]}"
    e2e.publish({"job_id": after, "pipeline": "avatar_generate", "tenant": tenant,
                 "model_id": model_id, "prompt": "{subject}"}, key=after.encode())
    failed = e2e.result(after, 120)
    assert failed["status"] == "failed" and failed["error"]["code"] == "model_not_found"
    assert "deleted" in failed["error"]["message"]


@pytest.mark.usefixtures("first_broker_only")
def test_training_requests_the_api_cannot_accept_are_refused_with_the_cause(e2e):
    status, answer = e2e.post_json("/avatars", {"images": ["s3://elsewhere/me.jpg"]},
                                   tenant="portraits")
    assert status == 400 and answer["error"]["code"] == "uri_refused"
    status, answer = e2e.post_json("/avatars", {"images": []})
    assert status == 400 and answer["error"]["code"] == "schema_violation"
    status, answer = e2e.post_json("/avatars", {"images": ["s3://restyle/a.jpg"],
                                                "params": {"steps": -1}})
    assert status == 400 and "params.steps" in answer["error"]["message"]
    body, headers = multipart({}, {"class_word": "woman"})
    status, answer = e2e.request("POST", "/avatars", body, headers)
    assert status == 400 and "photos" in answer["error"]["message"]


@pytest.mark.usefixtures("embedded_stack_only")
def test_the_cli_trains_with_a_progress_bar_then_generates(e2e, tmp_path):
    import os
    import subprocess
    import sys

    for name, photo in faces.portrait_set().items():
        photo.save(tmp_path / f"{name}.jpg", quality=92)
    env = {**os.environ, "RESTYLE_STATE_DIR": str(e2e.stack.state_dir)}
    env.pop("RESTYLE_KAFKA_BOOTSTRAP", None)
    cli = [sys.executable, "-m", "streams.cli.main", "avatar"]
    params = [f"--param={k}={v}" for k, v in {**TRAIN, "steps": 20}.items()]
    trained = subprocess.run([*cli, "train", str(tmp_path), "--subject", "zqkv", *params,
                              "--wait"], capture_output=True, text=True, env=env, timeout=600)
    assert trained.returncode == 0, trained.stderr
    model_id = trained.stdout.splitlines()[0]
    assert f"model {model_id}: trigger 'zqkv person', 12 photos, 20 steps" in trained.stdout
    assert "training: 100%" in trained.stderr and "20/20" in trained.stderr

    generated = subprocess.run([*cli, "generate", model_id, "--prompt", "{subject} smiling",
                                "--param", "steps=2", "--param", "width=64", "--param",
                                "height=64", "--wait"], capture_output=True, text=True,
                               env=env, timeout=300)
    assert generated.returncode == 0, generated.stderr
    assert ": done" in generated.stdout and "image: s3://" in generated.stdout
    listed = subprocess.run([*cli, "models"], capture_output=True, text=True, env=env,
                            timeout=60)
    row = next(line for line in listed.stdout.splitlines() if line.startswith(model_id))
    assert "zqkv person" in row  # the model's row in the table names its trigger


@pytest.mark.usefixtures("first_broker_only")
def test_training_far_longer_than_the_poll_interval_keeps_the_trainer_in_its_group(e2e):
    """The stack's workers leave their group after 8 s without polling (conftest); a trainer
    busy for longer keeps polling (training runs in a thread): it stays the same member of a
    stable group throughout, so its request is never redelivered mid-run and training is
    never started over."""
    from streams.core.app import consumer_group

    job_id = long_training(e2e, "long", steps=5000, until_checkpoint=20)
    group = consumer_group(e2e.settings, "trainer")
    members_at_start = trainer_group(e2e, group)
    trained_since = time.monotonic()
    while time.monotonic() - trained_since < 2 * 8 + 4:
        assert trainer_group(e2e, group) == members_at_start
        time.sleep(2)
    assert members_at_start[0] == "STABLE" and len(members_at_start[1]) == 1
    assert e2e.get(f"/jobs/{job_id}")[1]["status"] == "training"  # not started over
    # Cancelled rather than trained to the end: what is proven is proven by now.
    assert e2e.request("DELETE", f"/jobs/{job_id}")[0] == 202
    assert e2e.result(job_id, 60)["status"] == "cancelled"
    starts = [e for e in events(e2e, job_id)
              if e.get("status") == "training" and not e.get("stage")]
    assert len(starts) == 1  # one delivery of the request, one run


def trainer_group(e2e, group: str) -> tuple[str, list[str]]:
    """The group's state and its members' ids, as the broker describes them."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": e2e.endpoints["kafka_bootstrap"]})
    described = admin.describe_consumer_groups([group])[group].result(30)
    return described.state.name, sorted(member.member_id for member in described.members)


@pytest.mark.usefixtures("first_broker_only")
def test_a_model_trained_on_another_base_model_fails_generation_with_model_mismatch(e2e):
    tenant = e2e.client_settings.default_tenant
    model_id = f"elsewhere-{uuid.uuid4().hex[:6]}"
    record = {"model_id": model_id, "tenant": tenant, "base_model": "some/other-base",
              "family": "sd15", "adapter": f"s3://{e2e.bucket}/models/{model_id}/a.safetensors",
              "files": f"s3://{e2e.bucket}/models/{model_id}/", "rank": 4, "alpha": 4,
              "subject": "zqkv", "class_word": "person", "steps": 10, "final_loss": 0.1,
              "created_at": 1.0}
    e2e.publish(record, key=f"{tenant}/{model_id}".encode(), topic="restyle.models")
    outcome = generate(e2e, model_id)
    assert outcome["status"] == "failed"
    assert outcome["error"]["code"] == "model_mismatch"
    assert "some/other-base" in outcome["error"]["message"]


def test_a_cancelled_training_stops_keeps_its_checkpoint_and_frees_the_trainer(e2e):
    job_id = long_training(e2e, "cancelled", steps=5000, until_checkpoint=20)
    prefix = f"s3://{e2e.bucket}/avatars-in/cancelled/"
    assert e2e.request("DELETE", f"/jobs/{job_id}")[0] == 202
    outcome = e2e.result(job_id, 60)
    assert outcome["status"] == "cancelled"
    model = f"models/{job_id}/"
    keys = [item["Key"] for item in e2e.s3.list_objects_v2(
        Bucket=e2e.bucket, Prefix=model).get("Contents", [])]
    assert f"{model}checkpoints/latest.json" in keys  # kept, should it be trained again
    assert not any("/adapter/" in key for key in keys)
    # The trainer stopped: the next training finishes well before 5000 steps would have.
    after = f"avatar-after-cancel-{uuid.uuid4().hex[:8]}"
    e2e.publish({"job_id": after, "pipeline": "avatar_train", "images": [prefix],
                 "params": TRAIN}, key=after.encode())
    assert e2e.result(after, 240)["status"] == "done"
    assert e2e.get("/models")[0] == 200
    assert job_id not in [m["model_id"] for m in e2e.get("/models")[1]["models"]]
