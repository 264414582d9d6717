"""Background replacement's topics (RESTYLE_TOPIC_<NAME> renames one)."""
from __future__ import annotations

from streams.core.settings.broker import TopicNames


class BackgroundTopics(TopicNames):
    bg_expand: str = "restyle.stage.bg-expand"
    bg_mask: str = "restyle.stage.bg-mask"
    bg_finish: str = "restyle.stage.bg-finish"
