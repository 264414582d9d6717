"""Conditioned generation's topics. Each is renamed by its RESTYLE_TOPIC_* variable (the stage
topics' RESTYLE_TOPIC_COND_* names predate the package's vocabulary and are kept)."""
from __future__ import annotations

from pydantic import Field

from streams.core.settings.broker import TopicNames


class ConditionTopics(TopicNames):
    # Bucket notifications in (S3's event shape), from a bridge, a watcher or the store itself.
    bucket_events: str = "restyle.bucket-events"
    prepare: str = Field("restyle.stage.cond-prepare",
                         validation_alias="RESTYLE_TOPIC_COND_PREPARE")
    finish: str = Field("restyle.stage.cond-finish", validation_alias="RESTYLE_TOPIC_COND_FINISH")
