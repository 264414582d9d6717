"""Room makeover's topics (RESTYLE_TOPIC_<NAME> renames one)."""
from __future__ import annotations

from streams.core.settings.broker import TopicNames


class MakeoverTopics(TopicNames):
    analyze: str = "restyle.stage.analyze"
    embed: str = "restyle.stage.embed"
    retrieve: str = "restyle.stage.retrieve"
    compose: str = "restyle.stage.compose"
    depth: str = "restyle.stage.depth"
    reanalyze: str = "restyle.stage.reanalyze"
