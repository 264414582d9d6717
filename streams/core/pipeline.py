"""What a pipeline package exports so that the worker, the intake and the tracker use it
without naming it. agents/pipelines.py lists them; schemas/pipelines.py is the contract side."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from streams.core.runtime import Runtime
from streams.core.settings.broker import TopicNames


@dataclass(frozen=True)
class Pipeline:
    # The `pipeline` field of its uploads and jobs.
    name: str
    # Its agents: register(runtime, models, index).
    register: Callable[[Runtime, Any, Any], None]
    # Its own topics (the shared ones are streams.core.settings.Topics).
    topics: type[TopicNames]
    # Admits one upload from restyle.uploads that names this pipeline: validate it, refuse it
    # with the cause, or submit its job(s). None: the pipeline takes no uploads there (the
    # catalog has its own topic).
    admit: Callable[[Runtime, Any], Awaitable[None]] | None = None
    # The attribute of its topics that an admitted job starts on: the tracker forwards each new
    # job there, once.
    first_stage: str | None = None
    # Uploads that name no pipeline but have this pipeline's own shape (a Titan body).
    claims: Callable[[dict], bool] | None = None
    # The models its uploads validate against (the published contract of restyle.uploads).
    uploads: tuple[type, ...] = ()
