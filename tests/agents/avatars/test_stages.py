"""Avatar jobs from uploads and a generation job bound to its model: every default settled and
recorded, every refusal with its code and the setting or request that causes it."""
from __future__ import annotations

import random

import pytest

from agents.avatars.stages import bind_model, generation_job, new_subject, training_job
from schemas import StageFailure
from schemas.avatars import (
    AvatarGenerateUpload,
    AvatarTrainUpload,
    ModelRecord,
    ModelStatus,
    TrainParams,
)
from streams.core.settings import Settings

BASE = "s3://restyle"


def settings(**changes) -> Settings:
    return Settings(diffusion_model="sd15-base", **changes)


def record(**changes) -> ModelRecord:
    values = dict(model_id="m1", tenant="acme", base_model="sd15-base", family="sd15",
                  adapter="s3://restyle/models/m1/adapter/a.safetensors",
                  files="s3://restyle/models/m1/", rank=4, alpha=4, subject="zqkv",
                  class_word="woman", steps=500, final_loss=0.1, created_at=1.0)
    return ModelRecord(**{**values, **changes})


def test_a_training_job_settles_every_parameter_and_draws_a_subject():
    upload = AvatarTrainUpload(pipeline="avatar_train", images=["s3://restyle/me/"],
                               params=TrainParams(steps=800, rank=8))
    job = training_job(upload, "job-1", settings(), random.Random(1), 10.0, BASE)
    assert job.model_id == "job-1" and job.model_prefix == "s3://restyle/models/job-1/"
    assert job.params.steps == 800 and job.params.rank == 8 and job.params.alpha == 8
    assert job.params.learning_rate == 1e-4 and job.params.prior_preservation is True
    assert job.class_word == "person" and job.base_model == "sd15-base"
    assert job.subject.isalpha() and job.trigger == f"{job.subject} person"
    again = training_job(upload, "job-1", settings(), random.Random(1), 10.0, BASE)
    assert again.params.seed == job.params.seed  # drawn once, recorded in the job


def test_trigger_tokens_are_drawn_fresh():
    rng = random.Random(3)
    assert len({new_subject(rng) for _ in range(50)}) > 45


def test_training_on_an_sdxl_deployment_is_refused_with_the_reason():
    upload = AvatarTrainUpload(pipeline="avatar_train", images=["s3://restyle/me.jpg"])
    with pytest.raises(StageFailure) as refused:
        training_job(upload, "j", settings(diffusion_family="sdxl"), random.Random(), 0, BASE)
    assert refused.value.error.code == "invalid_params"
    assert "RESTYLE_DIFFUSION_FAMILY" in refused.value.error.message


def test_a_generation_job_fills_the_trigger_phrase_from_its_model():
    upload = AvatarGenerateUpload(pipeline="avatar_generate", model_id="m1",
                                  prompt="{subject} as an astronaut, {subject} smiling")
    job = generation_job(upload, "g1", settings().render_defaults, 1.0, random.Random(), 0,
                         BASE)
    bound = bind_model(job, record(), "sd15-base")
    assert bound.prompt == "zqkv woman as an astronaut, zqkv woman smiling"
    assert bound.adapter == record().adapter and bound.lora_scale == 1.0
    assert bound.output_prefix == "s3://restyle/results/g1"


@pytest.mark.parametrize("found, served, code, says", [
    (None, "sd15-base", "model_not_found", "no model 'm1'"),
    (record(status=ModelStatus.DELETED), "sd15-base", "model_not_found", "deleted"),
    (record(), "another-base", "model_mismatch", "trained on 'sd15-base'"),
])
def test_a_model_that_cannot_serve_the_job_fails_it_with_the_cause(found, served, code, says):
    upload = AvatarGenerateUpload(pipeline="avatar_generate", model_id="m1", prompt="x")
    job = generation_job(upload, "g1", settings().render_defaults, 1.0, random.Random(), 0,
                         BASE)
    with pytest.raises(StageFailure) as refused:
        bind_model(job, found, served)
    assert refused.value.error.code == code and says in refused.value.error.message


def test_uploads_that_mix_uris_and_a_prefix_or_bad_tokens_are_refused():
    with pytest.raises(ValueError, match="prefix"):
        AvatarTrainUpload(pipeline="avatar_train", images=["s3://b/a.jpg", "s3://b/dir/"])
    with pytest.raises(ValueError):
        AvatarTrainUpload(pipeline="avatar_train", images=["s3://b/a.jpg"], subject="no spaces")
    with pytest.raises(ValueError, match="multiple of 8"):
        TrainParams(resolution=500)
