"""Background replacement's topics. Each is renamed by its RESTYLE_TOPIC_BG_* variable (the
names predate the package's vocabulary and are kept)."""
from __future__ import annotations

from pydantic import Field

from streams.core.settings.broker import TopicNames


class BackgroundTopics(TopicNames):
    expand: str = Field("restyle.stage.bg-expand", validation_alias="RESTYLE_TOPIC_BG_EXPAND")
    mask: str = Field("restyle.stage.bg-mask", validation_alias="RESTYLE_TOPIC_BG_MASK")
    finish: str = Field("restyle.stage.bg-finish", validation_alias="RESTYLE_TOPIC_BG_FINISH")
