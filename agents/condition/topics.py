"""Conditioned generation's topics (RESTYLE_TOPIC_<NAME> renames one)."""
from __future__ import annotations

from streams.core.settings.broker import TopicNames


class ConditionTopics(TopicNames):
    bucket_events: str = "restyle.bucket-events"
    cond_prepare: str = "restyle.stage.cond-prepare"
    cond_finish: str = "restyle.stage.cond-finish"
