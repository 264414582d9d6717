"""The faust apps: one for the CPU stages (with the jobs table and the status API), one for the
GPU worker (its own consumer group). Topics and the table are declared here, nowhere else."""
from __future__ import annotations

from dataclasses import dataclass

import faust

from streams.core.consumer import use_fetch_max_wait
from streams.tracking.jobboard import JobBoard
from streams.core.settings import Settings


@dataclass
class Wiring:
    app: faust.App
    topics: dict[str, faust.TopicT]
    jobs: faust.Table | None
    # ingest_id -> IngestState JSON, and "ingest_id/product_id" -> that product's last outcome.
    ingests: faust.Table | None = None
    ingest_outcomes: faust.Table | None = None
    # batch_id -> BatchState JSON; "batch_id/job_id" -> ImageOutcome JSON (and the batch's
    # job ids in order under "batch_id/#index").
    batches: faust.Table | None = None
    batch_images: faust.Table | None = None
    # The jobs table plus render progress not yet stored in it: read job state through this.
    board: JobBoard | None = None


def create_app(settings: Settings, role: str, web_port: int | None = None) -> Wiring:
    """role: "cpu" (stages, table, status API) or "gpu" (the diffusion worker)."""
    if not settings.kafka_bootstrap:
        raise SystemExit("no Kafka configured: set RESTYLE_KAFKA_BOOTSTRAP or start `restyle up`")
    port = web_port or settings.web_port
    use_fetch_max_wait(settings.fetch_max_wait_ms)
    datadir = settings.state_dir / "faust" / f"{role}-{port}"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id if role == "cpu" else f"{settings.app_id}-gpu",
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        # Job state lives in a local store: recovery must not depend on the broker's end offsets.
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee=settings.processing_guarantee,
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        producer_linger=settings.producer_linger_ms / 1000,
        consumer_auto_offset_reset="earliest",
        recovery_consistency_check=settings.recovery_consistency_check,
        web_host=settings.web_host,
        web_port=port,
        canonical_url=f"http://{settings.advertised_host or settings.web_host}:{port}",
        web_in_thread=False,
        key_serializer="raw",
        value_serializer="raw",
        producer_max_request_size=8 * 1024 * 1024,
        # Titan bodies carry base64 images up to 5 MB (about 7 MB encoded); aiohttp's default
        # request limit is 1 MB.
        web_application_options={"client_max_size": 32 * 1024 * 1024},
    )
    names = settings.topics.model_dump()
    topics = {role_name: app.topic(name, key_serializer="raw", value_serializer="raw",
                                   partitions=settings.partitions)
              for role_name, name in names.items()}
    jobs = ingests = ingest_outcomes = batches = batch_images = None
    if role == "cpu":
        # Raw bytes both ways: keys are job_id bytes exactly as producers key
        # restyle.job-events (so the web router hashes a job_id to its owner), values JobState JSON.
        jobs = app.Table("jobs", default=None, partitions=settings.partitions,
                         key_type=bytes, value_type=bytes)
        ingests = app.Table("ingests", default=None, partitions=settings.partitions,
                            key_type=bytes, value_type=bytes)
        ingest_outcomes = app.Table("ingest-outcomes", default=None,
                                    partitions=settings.partitions, key_type=bytes,
                                    value_type=bytes)
        batches = app.Table("batches", default=None, partitions=settings.partitions,
                            key_type=bytes, value_type=bytes)
        batch_images = app.Table("batch-images", default=None, partitions=settings.partitions,
                                 key_type=bytes, value_type=bytes)
    board = JobBoard(jobs, settings.progress_store_interval_s) if jobs is not None else None
    return Wiring(app, topics, jobs, ingests, ingest_outcomes, batches, batch_images, board)
