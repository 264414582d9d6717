"""The avatar pipelines' own topics (the trainer's requests are the shared `train` topic, as
the GPU worker's are the shared `render` topic)."""
from __future__ import annotations

from typing import ClassVar

from schemas import RenderResult
from schemas.avatars import AvatarGenerateJob, AvatarTrainJob, TrainOutcome
from streams.core.settings.broker import Carries, TopicNames


class AvatarTopics(TopicNames):
    # Training: the photo check, then the trainer's answer.
    avatar_prepare: str = "restyle.stage.avatar-prepare"
    avatar_trained: str = "restyle.stage.avatar-trained"
    # Generation: the model looked up, then the GPU worker's answer.
    avatar_generate: str = "restyle.stage.avatar-generate"
    avatar_finish: str = "restyle.stage.avatar-finish"

    carries: ClassVar[dict[str, Carries]] = {
        "avatar_prepare": Carries(AvatarTrainJob, "the job id",
                                  "Trainings whose photos to check."),
        "avatar_trained": Carries(TrainOutcome, "the job id", "The trainer's answer."),
        "avatar_generate": Carries(AvatarGenerateJob, "the job id",
                                   "Generations whose model to look up."),
        "avatar_finish": Carries(RenderResult, "the job id", "The GPU worker's answer."),
    }
