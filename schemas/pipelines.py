"""The one table of job pipelines, schemas side: a pipeline's name -> its job and result models.

A job on restyle.job-events and a result in the jobs table are validated by the models this table
names for their `pipeline` tag, so the job and result unions are derived from it. A missing or
unknown tag is a validation error that names the known pipelines: no pipeline is a default.
Adding a pipeline is its schema module plus one line below (agents/pipelines.py is the other
side: how a pipeline is admitted, started and wired).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Union

from pydantic import BaseModel, PlainValidator, SerializeAsAny

from schemas.avatars import (
    AvatarGenerateJob,
    AvatarGenerateResult,
    AvatarTrainJob,
    AvatarTrainResult,
)
from schemas.background import BackgroundJob, BackgroundResult
from schemas.conditioning import ConditionJob, ConditionResult
from schemas.makeover import MakeoverJob, MakeoverResult


@dataclass(frozen=True)
class PipelineContract:
    name: str
    job: type[BaseModel]
    result: type[BaseModel]


PIPELINES: dict[str, PipelineContract] = {contract.name: contract for contract in (
    PipelineContract("room_makeover", MakeoverJob, MakeoverResult),
    PipelineContract("background_replace", BackgroundJob, BackgroundResult),
    PipelineContract("condition", ConditionJob, ConditionResult),
    PipelineContract("avatar_train", AvatarTrainJob, AvatarTrainResult),
    PipelineContract("avatar_generate", AvatarGenerateJob, AvatarGenerateResult),
)}


def contract_for(name: str | None) -> PipelineContract:
    known = ", ".join(sorted(PIPELINES))
    if name is None:
        raise ValueError(f"no pipeline named: give one of {known}")
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}: known pipelines are {known}")
    return PIPELINES[name]


def _validator(role: str):
    """Validate a job or result by the model the table names for its pipeline tag."""
    def validate(value):
        if isinstance(value, BaseModel):
            model = getattr(contract_for(getattr(value, "pipeline", None)), role)
            if isinstance(value, model):
                return value
            value = value.model_dump()
        if not isinstance(value, dict):
            raise ValueError(f"a {role} must be a JSON object")
        pipeline = value.get("pipeline")
        return getattr(contract_for(pipeline if isinstance(pipeline, str) else None),
                       role).model_validate(value)
    return validate


# Serialized as whatever model the value is (SerializeAsAny), validated through the table; its
# JSON Schema (the published contract) is one of the table's models.
AnyJob = Annotated[SerializeAsAny[BaseModel], PlainValidator(
    _validator("job"), json_schema_input_type=Union[tuple(c.job for c in PIPELINES.values())])]
AnyResult = Annotated[SerializeAsAny[BaseModel], PlainValidator(
    _validator("result"),
    json_schema_input_type=Union[tuple(c.result for c in PIPELINES.values())])]
