"""The composition root: the one module that wires settings, adapters, models, pipelines,
tracking and the API into a worker process.

`restyle worker cpu` runs the stages, the trackers and the status API; `restyle worker gpu`
runs the diffusion agent; `restyle worker trainer` trains avatar adapters.
"""
from __future__ import annotations

import asyncio
import logging
import os

import faust

from agents import intake
from agents.models.device import pick_device, pick_dtype
from agents.models.stage_models import StageModels
from agents.pipelines import PIPELINES, first_stages, topic_names, topic_sets
from streams.adapters.index import open_index
from streams.adapters.storage import Storage
from streams.api import avatars as avatars_api
from streams.api import batches as batches_api
from streams.api import catalog as catalog_api
from streams.api import files as files_api
from streams.api import site
from streams.api import health as health_api
from streams.api import jobs as jobs_api
from streams.api import tenants as tenants_api
from streams.api.auth.keyring import KeyRing
from streams.api.auth.middleware import Authenticator, auth_middleware
from streams.adapters.journal import InFlightJournal
from streams.api.limits import TenantLimiter, limit_middleware
from streams.core.app import create_app
from streams.core import heap, lag, logs, tracing
from streams.core.kafka import client_options
from streams.core.rebalance_watch import watch_rebalances
from streams.core.runtime import Runtime
from streams.core.settings import Settings
from streams.core.shutdown import PORT_TAKEN, exit_if_still_running, port_taken
from streams.core.topics import TopicLayoutError, ensure_topics
from streams.tracking import activity, batches, ingests, webhooks
from streams.tracking import jobs as job_tracker
from streams.tracking.tables import open_tables

log = logging.getLogger("restyle.worker")


def build_worker(settings: Settings, role: str, web_port: int | None = None) -> Runtime:
    """The worker of a role, as its runtime (rt.app is the faust app to run)."""
    sets = topic_sets()
    # Every worker reads the API keys: any of them may be asked to verify one.
    keyring = KeyRing(client_options(settings), settings.topics.api_keys)
    gate = auth_middleware(Authenticator(settings, keyring))
    limiter = TenantLimiter(settings)
    wiring = create_app(settings, role, topic_names(settings, sets), web_port,
                        [tracing.http_middleware(), gate, limit_middleware(limiter)])
    wiring.app.task(keyring.run)
    # Messages in flight, on local disk: one that kills the worker is recognised when it
    # comes back (one directory per role, shared by a role's workers on this machine).
    journal = InFlightJournal(settings.state_dir / "in-flight" / role)
    rt = Runtime(settings, wiring, Storage.from_settings(settings), sets, journal)
    # Every worker reads the cancellations: any of them may be working on a cancelled job.
    wiring.app.task(rt.cancellations.run)
    # And every host's count of worker deaths, after telling its own (streams/core/deaths.py).
    # In this order: faust starts its tasks in order, and tell_deaths waits for the reader
    # only once it runs (what was forgiven since is not told again).
    wiring.app.task(rt.worker_deaths.run)
    wiring.app.task(rt.tell_deaths)
    if role == "cpu":
        build_cpu_worker(rt, first_stages(sets), limiter)
    elif role == "gpu":
        build_gpu_worker(rt)
    elif role == "trainer":
        from gpu_agent import training as trainer  # diffusers: see build_gpu_worker

        trainer.register(rt)
    else:
        raise ValueError(f"unknown worker role {role!r}")
    health_api.register(rt)
    watch_rebalances(rt)
    return rt


def build_cpu_worker(rt: Runtime, first_stages: dict[str, str], limiter: TenantLimiter) -> None:
    """first_stages: pipeline name -> the topic its admitted jobs start on."""
    settings = rt.settings
    # Each model, once loaded, is kept out of garbage collection: none is ever unloaded, and
    # a full collection over them stops the status API for a second (streams/core/heap.py).
    models = StageModels(settings, after_load=heap.settle)
    models.warm_up()  # fail fast on a bad model id, and keep the first job fast
    if settings.results_base.startswith("s3://"):
        rt.app.task(settled_storage(rt))
    rt.app.task(rt.registry.run)
    if settings.lag_interval_s > 0:
        rt.app.timer(interval=settings.lag_interval_s)(lag.LagReport(settings).report)
    index = open_index(settings)
    tables = open_tables(rt.app, settings, guard=rt.pauses.ensure_in_group)
    intake.register(rt)
    for pipeline in PIPELINES.values():
        pipeline.register(rt, models, index)
    job_tracker.register(rt, tables, first_stages)
    batches.register(rt, tables)
    webhooks.register(rt)
    ingests.register(rt, tables)
    activity.register(rt, tables)
    usage = tenants_api.register(rt, tables)
    jobs_api.register(rt, tables, limiter, usage)
    catalog_api.register(rt, tables, models, index)
    batches_api.register(rt, tables, models, usage)
    avatars_api.register(rt, usage)
    files_api.register(rt)
    site.register(rt)


def settled_storage(rt: Runtime):
    """The S3 client, made at start and settled with the models: botocore's model of the S3
    service is tens of thousands of objects kept for the life of the process, which every
    full collection walked when the first job made it (streams/core/heap.py)."""
    async def open_storage() -> None:
        try:
            await rt.storage.open()
        except Exception as exc:  # noqa: BLE001 - made at the first object instead
            log.warning("could not make the S3 client at start (%s)", exc)
            return
        heap.settle("the S3 client")
    return open_storage


def build_gpu_worker(rt: Runtime) -> None:
    # Imported by the roles that render or train: importing diffusers takes ~15 s of CPU (a
    # CPU worker's start, and each restart of it, would wait for a library it never calls).
    from gpu_agent import worker as gpu_worker
    from gpu_agent.engine import RenderEngine
    from gpu_agent.previews import Previews

    settings = rt.settings
    # The warmed pipelines must all fit the LRU, or warming the last evicts the first and
    # every job of that kind reloads its pipeline.
    cache_size = max(settings.pipeline_cache_size,
                     len([t for t in settings.gpu_warm_tasks if t != "avatar"]))
    device = pick_device(settings.device_for("diffusion"))
    previews = Previews.load(settings.preview_every_steps, settings.preview_size,
                             settings.diffusion_family, settings.preview_decoder, device,
                             pick_dtype(settings.dtype, device))
    engine = RenderEngine(device, settings.dtype, cache_size,
                          settings.diffusion_family, settings.prompt_cache_size,
                          settings.avatar_resident_adapters, settings.avatar_hotswap_rank,
                          settings.share_base_model, settings.compile_unet, previews)
    for task in settings.gpu_warm_tasks:
        if task.startswith("controlnet_"):
            engine.pipeline(settings.model_id("diffusion"), settings.model_id(task))
            if settings.compile_unet:  # compile now, not in a user's first render
                engine.warm_up(settings.model_id("diffusion"), settings.model_id(task),
                               settings.render_defaults)
    if "inpaint" in settings.gpu_warm_tasks:
        engine.inpaint_pipeline(settings.model_id("inpainting"))
    if "avatar" in settings.gpu_warm_tasks:
        engine.text2img_pipeline(settings.model_id("diffusion"))
    gpu_worker.register(rt, engine)


def run_worker(settings: Settings, role: str, web_port: int | None = None,
               loglevel: str = "info") -> None:
    logged = logs.configure(settings.log_format, loglevel)
    # Set before torch loaded (streams/cli/model_threads.py), said once there is a log to say it
    log.info("model threads: %s (OMP_NUM_THREADS)",
             os.environ.get("OMP_NUM_THREADS", "torch's default"))
    tracing.export_spans(f"restyle-{role}-worker")
    if settings.kafka_bootstrap:
        try:
            asyncio.run(ensure_topics(settings, topic_names(settings, topic_sets())))
        except TopicLayoutError as refused:  # a misconfiguration: the cause, not a traceback
            raise SystemExit(f"restyle worker refused to start: {refused}") from None
    rt = build_worker(settings, role, web_port)
    worker = GracefulWorker(rt, loglevel=loglevel, quiet=True, redirect_stdouts=False,
                            logging_config=logged)
    try:
        worker.execute_from_commandline()
    except SystemExit as exiting:
        # mode turns the error that ended the start into SystemExit(1): said apart when it was
        # the web port, so a supervisor can start this worker again on another.
        if port_taken(worker.crash_reason) or port_taken(exiting.__context__):
            raise SystemExit(PORT_TAKEN) from None
        raise


class GracefulWorker(faust.Worker):
    """faust's worker, stopping as a deployment expects on SIGTERM (and Ctrl-C): not ready at
    once, no new work, what is in flight finished within RESTYLE_SHUTDOWN_GRACE_S (or handed
    back), then offsets committed and the group left."""

    def __init__(self, rt: Runtime, **options):
        super().__init__(rt.app, **options)
        self.rt = rt

    async def _stop_on_signal(self, signal) -> None:
        settings = self.rt.settings
        exit_if_still_running(settings.shutdown_grace_s + settings.shutdown_leave_s,
                              f"signal {signal.name}")
        await self.rt.drain(settings.shutdown_grace_s)
        await super()._stop_on_signal(signal)
