"""Conditioned generation's topics. Each is renamed by its RESTYLE_TOPIC_* variable (the stage
topics' RESTYLE_TOPIC_COND_* names predate the package's vocabulary and are kept)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from schemas import RenderResult
from schemas.conditioning import ConditionJob
from streams.core.settings.broker import Carries, TopicNames


class ConditionTopics(TopicNames):
    # Bucket notifications in (S3's event shape), from a bridge, a watcher or the store itself.
    bucket_events: str = "restyle.bucket-events"
    prepare: str = Field("restyle.stage.cond-prepare",
                         validation_alias="RESTYLE_TOPIC_COND_PREPARE")
    finish: str = Field("restyle.stage.cond-finish", validation_alias="RESTYLE_TOPIC_COND_FINISH")

    carries: ClassVar[dict[str, Carries]] = {
        "bucket_events": Carries(None, "the object's bucket/key",
                                 "S3 event notifications, as S3 writes them (`{\"Records\": "
                                 "[{\"eventName\": \"ObjectCreated:Put\", \"s3\": "
                                 "{\"bucket\": {\"name\"}, \"object\": {\"key\"}}}]}`): "
                                 "from `restyle bridge-sqs`, `restyle watch` or the store.",
                                 "in"),
        "prepare": Carries(ConditionJob, "the job id", "Jobs whose conditioning map to draw."),
        "finish": Carries(RenderResult, "the job id", "The GPU worker's answer."),
    }
