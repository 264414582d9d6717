"""The one table of pipelines, agents side: how each is admitted, started and wired.
schemas/pipelines.py is the contract side (job and result models by the same names).

The intake, the tracker's first stage, the worker's topics and agents all read this table;
adding a pipeline is one package and one line here.
"""
from __future__ import annotations

from agents.avatars.agents import GENERATE as AVATAR_GENERATE
from agents.avatars.agents import TRAIN as AVATAR_TRAIN
from agents.background.agents import PIPELINE as BACKGROUND
from agents.catalog.agents import PIPELINE as CATALOG
from agents.condition.agents import PIPELINE as CONDITION
from agents.makeover.agents import PIPELINE as MAKEOVER
from schemas import ErrorCode, StageFailure
from streams.core.pipeline import Pipeline
from streams.core.settings import Settings
from streams.core.settings.broker import TopicNames

PIPELINES: dict[str, Pipeline] = {p.name: p for p in (MAKEOVER, BACKGROUND, CONDITION, CATALOG,
                                                       AVATAR_TRAIN, AVATAR_GENERATE)}


def for_upload(upload: dict) -> Pipeline:
    """The pipeline an upload on restyle.uploads is for: the one it names, or the one whose
    own shape it has (a Titan body). Missing or unknown: StageFailure naming the choices."""
    admitting = {name: p for name, p in PIPELINES.items() if p.admit is not None}
    known = ", ".join(sorted(admitting))
    name = upload.get("pipeline")
    if name is None:
        for pipeline in admitting.values():
            if pipeline.claims is not None and pipeline.claims(upload):
                return pipeline
        raise StageFailure(ErrorCode.UNSUPPORTED_PIPELINE,
                           f"the upload names no pipeline: give \"pipeline\": one of {known}")
    if not isinstance(name, str) or name not in admitting:
        where = " (it takes events on its own topic)" if name in PIPELINES else ""
        raise StageFailure(ErrorCode.UNSUPPORTED_PIPELINE,
                           f"unknown pipeline {name!r}{where}: uploads name one of {known}")
    return admitting[name]


def topic_sets() -> list[TopicNames]:
    """Each pipeline package's topics (once, however many pipelines it holds), their names
    read from the environment now."""
    kinds = dict.fromkeys(pipeline.topics for pipeline in PIPELINES.values())
    return [kind() for kind in kinds]


def topic_names(settings: Settings, sets: list[TopicNames]) -> list[str]:
    """Every topic a worker declares: the shared ones and each pipeline's own."""
    names = list(settings.topics.model_dump().values())
    for topics in sets:
        names += topics.model_dump().values()
    return list(dict.fromkeys(names))


def first_stages(sets: list[TopicNames]) -> dict[str, str]:
    """pipeline name -> the topic its admitted jobs start on (read by the job tracker)."""
    by_kind = {type(topics): topics for topics in sets}
    return {name: getattr(by_kind[p.topics], p.first_stage)
            for name, p in PIPELINES.items() if p.first_stage}
