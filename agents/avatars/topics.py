"""The avatar pipelines' own topics (the trainer's requests are the shared `train` topic, as
the GPU worker's are the shared `render` topic)."""
from __future__ import annotations

from streams.core.settings.broker import TopicNames


class AvatarTopics(TopicNames):
    # Training: the photo check, then the trainer's answer.
    avatar_prepare: str = "restyle.stage.avatar-prepare"
    avatar_trained: str = "restyle.stage.avatar-trained"
    # Generation: the model looked up, then the GPU worker's answer.
    avatar_generate: str = "restyle.stage.avatar-generate"
    avatar_finish: str = "restyle.stage.avatar-finish"
