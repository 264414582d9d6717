"""Worker processes: `restyle worker cpu` (stages, tracker, status API) and
`restyle gpu-worker` (the diffusion agent)."""
from __future__ import annotations

import logging

import faust

from streams.core.app import create_app
from streams.core.runtime import Runtime
from streams.core.settings import Settings
from streams.adapters.storage import Storage


def build_worker(settings: Settings, role: str, web_port: int | None = None) -> faust.App:
    wiring = create_app(settings, role, web_port)
    rt = Runtime(settings, wiring, Storage.from_settings(settings))
    if role == "cpu":
        from agents import (background_agents, catalog_agents, condition_agents, intake,
                            makeover_agents)
        from agents.models.stage_models import StageModels
        from streams.api import batches as batch_web
        from streams.tracking import batches
        from streams.api import catalog as catalog_web
        from streams.tracking import ingests
        from streams.tracking import jobs as tracker
        from streams.api import jobs as web
        from streams.tracking import webhooks
        from streams.adapters.index import open_index

        models = StageModels(settings)
        models.warm_up()  # fail fast on a bad model id, and keep the first job fast
        index = open_index(settings)
        intake.register(rt)
        makeover_agents.register(rt, models, index)
        background_agents.register(rt, models)
        condition_agents.register(rt, models)
        catalog_agents.register(rt, models, index)
        tracker.register(rt)
        batches.register(rt)
        webhooks.register(rt)
        ingests.register(rt)
        web.register(rt)
        catalog_web.register(rt, models, index)
        batch_web.register(rt, models)
    elif role == "gpu":
        from gpu_agent.engine import RenderEngine
        from gpu_agent.worker import register
        from streams.api.jobs import register_health

        # The warmed pipelines must all fit the LRU, or warming the last evicts the first and
        # every job of that kind reloads its pipeline.
        cache_size = max(settings.pipeline_cache_size, len(settings.gpu_warm_tasks))
        engine = RenderEngine(settings.device, settings.dtype, cache_size,
                              settings.diffusion_family, settings.prompt_cache_size)
        for task in settings.gpu_warm_tasks:
            if task.startswith("controlnet_"):
                engine.pipeline(settings.model_id("diffusion"), settings.model_id(task))
        if "inpaint" in settings.gpu_warm_tasks:
            engine.inpaint_pipeline(settings.model_id("inpainting"))
        register(rt, engine)
        register_health(rt)
    else:
        raise ValueError(f"unknown worker role {role!r}")
    return wiring.app


def run_worker(settings: Settings, role: str, web_port: int | None = None,
               loglevel: str = "info") -> None:
    import asyncio

    from streams.core.topics import ensure_topics

    logging.basicConfig(level=loglevel.upper())
    if settings.kafka_bootstrap:
        asyncio.run(ensure_topics(settings))
    app = build_worker(settings, role, web_port)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
