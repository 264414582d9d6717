"""Room makeover's topics (RESTYLE_TOPIC_<NAME> renames one)."""
from __future__ import annotations

from typing import ClassVar

from schemas import MakeoverJob, RenderResult
from streams.core.settings.broker import Carries, TopicNames


class MakeoverTopics(TopicNames):
    analyze: str = "restyle.stage.analyze"
    embed: str = "restyle.stage.embed"
    retrieve: str = "restyle.stage.retrieve"
    compose: str = "restyle.stage.compose"
    depth: str = "restyle.stage.depth"
    reanalyze: str = "restyle.stage.reanalyze"

    carries: ClassVar[dict[str, Carries]] = {
        "analyze": Carries(MakeoverJob, "the job id", "Jobs to detect objects in."),
        "embed": Carries(MakeoverJob, "the job id", "Detections to embed (chained by default)."),
        "retrieve": Carries(MakeoverJob, "the job id",
                            "Embeddings to match against the catalog (chained by default)."),
        "compose": Carries(MakeoverJob, "the job id",
                           "Matches to weave into the prompt (chained by default)."),
        "depth": Carries(MakeoverJob, "the job id",
                         "Jobs whose depth map to estimate (chained by default)."),
        "reanalyze": Carries(RenderResult, "the job id",
                             "The GPU worker's answer: images to analyse again."),
    }
