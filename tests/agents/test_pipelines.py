"""The tables of pipelines: which pipeline an upload is for, how jobs and results are validated,
which topics a worker declares, and where an admitted job starts. No pipeline is a default."""
from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from agents.background.topics import BackgroundTopics
from agents.makeover.topics import MakeoverTopics
from agents.pipelines import PIPELINES, first_stages, for_upload, topic_names, topic_sets
from gpu_agent.worker import TASKS
from schemas import ErrorCode, JobEvent, JobEventKind, JobState, StageFailure
from schemas.events import RenderTask
from schemas.pipelines import PIPELINES as CONTRACTS
from streams.core.settings import Settings
from streams.tracking.jobstate import apply_event


def test_an_upload_goes_to_the_pipeline_it_names():
    for name in ("room_makeover", "background_replace", "condition", "avatar_train",
                 "avatar_generate"):
        assert for_upload({"pipeline": name}).name == name


def test_a_titan_body_names_no_pipeline_and_is_claimed_by_background_replacement():
    body = {"taskType": "OUTPAINTING", "outPaintingParams": {"image": "..."}}
    assert for_upload(body).name == "background_replace"


@pytest.mark.parametrize("upload, expected", [
    ({"image": "s3://b/k.jpg", "style": "modern"}, "the upload names no pipeline"),
    ({"pipeline": "sculpt"}, "unknown pipeline 'sculpt'"),
    ({"pipeline": 7}, "unknown pipeline 7"),
    ({"pipeline": "catalog"}, "it takes events on its own topic"),
])
def test_a_missing_or_unknown_pipeline_is_refused_with_the_choices(upload, expected):
    with pytest.raises(StageFailure) as refused:
        for_upload(upload)
    assert refused.value.error.code is ErrorCode.UNSUPPORTED_PIPELINE
    assert expected in refused.value.error.message
    assert "avatar_generate, avatar_train, background_replace, condition, room_makeover" in \
        refused.value.error.message


def test_the_two_tables_name_the_same_job_pipelines():
    admitting = {name for name, p in PIPELINES.items() if p.admit is not None}
    assert admitting == set(CONTRACTS)
    assert first_stages(topic_sets()) == {"room_makeover": "restyle.stage.analyze",
                                          "background_replace": "restyle.stage.bg-mask",
                                          "condition": "restyle.stage.cond-prepare",
                                          "avatar_train": "restyle.stage.avatar-prepare",
                                          "avatar_generate": "restyle.stage.avatar-generate"}


def test_a_worker_declares_every_pipelines_topics_and_the_shared_ones_each_once(monkeypatch):
    sets = topic_sets()
    names = topic_names(Settings(), sets)
    assert {"restyle.uploads", "restyle.stage.analyze", "restyle.stage.bg-mask",
            "restyle.catalog", "restyle.stage.cond-finish"} <= set(names)
    roles = sum(len(topics.model_fields) for topics in (Settings().topics, *sets))
    assert len(names) == roles  # no two roles share a topic
    monkeypatch.setenv("RESTYLE_TOPIC_ANALYZE", "acme.analyze")
    monkeypatch.setenv("RESTYLE_TOPIC_BG_MASK", "acme.mask")  # its variable predates `mask`
    by_kind = {type(topics): topics for topics in topic_sets()}
    assert by_kind[MakeoverTopics].analyze == "acme.analyze"
    assert by_kind[BackgroundTopics].mask == "acme.mask"


def test_every_render_task_has_its_engine_call():
    assert set(TASKS) == set(get_args(RenderTask))


def job_event(job: dict) -> dict:
    return {"job_id": "j1", "kind": "submitted", "at": 1.0, "job": job}


def test_a_job_is_validated_by_the_model_its_pipeline_names():
    event = JobEvent.model_validate(job_event({
        "pipeline": "room_makeover", "job_id": "j1", "style": "modern", "image": "s3://b/k",
        "submitted_at": 1.0, "params": {"steps": 2, "guidance": 7.5, "controlnet_scale": 1.0,
                                        "seed": 1, "width": 64, "height": 64,
                                        "negative_prompt": "", "num_images": 1}}))
    assert type(event.job).__name__ == "MakeoverJob"
    assert JobEvent.model_validate_json(event.model_dump_json()) == event  # round trip

    with pytest.raises(ValidationError, match="unknown pipeline 'sculpt'"):
        JobEvent.model_validate(job_event({"pipeline": "sculpt", "job_id": "j1"}))
    with pytest.raises(ValidationError, match="no pipeline named"):
        JobEvent.model_validate(job_event({"job_id": "j1", "style": "modern"}))
    with pytest.raises(ValidationError, match="job.style"):  # the pipeline's own model speaks
        JobEvent.model_validate(job_event({"pipeline": "room_makeover", "job_id": "j1"}))


def test_a_result_without_its_pipeline_is_not_taken_for_a_room_makeover():
    with pytest.raises(ValidationError, match="no pipeline named"):
        JobState.model_validate({"job_id": "j1", "status": "done", "created_at": 1.0,
                                 "updated_at": 1.0, "result": {"images": []}})


def test_a_rejected_upload_keeps_the_pipeline_it_was_for():
    error = {"code": "invalid_params", "message": "no"}
    rejected = JobEvent.model_validate({"job_id": "j1", "kind": JobEventKind.REJECTED,
                                        "at": 1.0, "pipeline": "condition", "error": error})
    transition = apply_event(None, rejected)
    assert transition.state.pipeline == "condition" and transition.result.pipeline == "condition"

    unreadable = rejected.model_copy(update={"pipeline": None})
    assert apply_event(None, unreadable).result.pipeline is None  # not guessed
