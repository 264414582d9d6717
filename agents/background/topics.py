"""Background replacement's topics. Each is renamed by its RESTYLE_TOPIC_BG_* variable (the
names predate the package's vocabulary and are kept)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from schemas import RenderResult
from schemas.background import BackgroundBatch, BackgroundJob
from streams.core.settings.broker import Carries, TopicNames


class BackgroundTopics(TopicNames):
    expand: str = Field("restyle.stage.bg-expand", validation_alias="RESTYLE_TOPIC_BG_EXPAND")
    mask: str = Field("restyle.stage.bg-mask", validation_alias="RESTYLE_TOPIC_BG_MASK")
    finish: str = Field("restyle.stage.bg-finish", validation_alias="RESTYLE_TOPIC_BG_FINISH")

    carries: ClassVar[dict[str, Carries]] = {
        "expand": Carries(BackgroundBatch, "the batch id",
                          "Admitted batches to expand into one job per image."),
        "mask": Carries(BackgroundJob, "the job id", "Images whose mask to compute."),
        "finish": Carries(RenderResult, "the job id", "The GPU worker's answer."),
    }
