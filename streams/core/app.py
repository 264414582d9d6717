"""The faust apps: one for the CPU stages (with the tracking tables and the status API), one for
the GPU worker (its own consumer group). Topics are declared here, nowhere else; the tables are
declared by streams/tracking/tables.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import faust

from streams.core.consumer import install_consumer
from streams.core.kafka import faust_credentials
from streams.core.settings import Settings


@dataclass
class Wiring:
    app: faust.App
    # Every topic the worker sends to or consumes, by its name.
    channels: dict[str, faust.TopicT]


def consumer_group(settings: Settings, role: str) -> str:
    """Each role its own consumer group (its faust app id): the GPU and trainer workers share
    no partitions with the CPU stages. What autoscalers measure the lag of (k8s/)."""
    return settings.app_id if role == "cpu" else f"{settings.app_id}-{role}"


def create_app(settings: Settings, role: str, topic_names: Iterable[str],
               web_port: int | None = None, middlewares: Iterable = ()) -> Wiring:
    """role: "cpu" (stages, tables, status API), "gpu" (the diffusion worker) or "trainer"
    (avatar training); topic_names:
    every topic the agents use (the shared ones and each pipeline's); middlewares: aiohttp
    middlewares every page goes through (authentication)."""
    if not settings.kafka_bootstrap:
        raise SystemExit("no Kafka configured: set RESTYLE_KAFKA_BOOTSTRAP or start `restyle up`")
    port = web_port or settings.web_port
    install_consumer(settings.fetch_max_wait_ms)
    datadir = settings.state_dir / "faust" / f"{role}-{port}"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        consumer_group(settings, role),
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        **faust_credentials(settings),
        # Job state lives in a local store: recovery must not depend on the broker's end offsets.
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee=settings.processing_guarantee,
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_max_poll_interval=settings.max_poll_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        producer_linger=settings.producer_linger_ms / 1000,
        # The producer retries a send (a leader moving, a broker restarting) for this long; a
        # stage waits for its sends' acknowledgements (Runtime.handle).
        producer_request_timeout=max(30.0, settings.retry_budget_s),
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
        web_application_options={"client_max_size": 32 * 1024 * 1024,
                                 "middlewares": list(middlewares)},
        # faust's own pages (tables, routing, stats, graph) would show any caller every job:
        # only restyle's pages are served.
        web_router_enabled=False, web_tables_enabled=False, web_stats_enabled=False,
        web_graph_enabled=False, web_metrics_enabled=False,
    )
    # The one built-in page without a setting (a "/" index); nothing of faust's is served.
    app.web.blueprints._enabled.clear()
    channels = {name: app.topic(name, key_serializer="raw", value_serializer="raw",
                                partitions=settings.partitions) for name in topic_names}
    return Wiring(app, channels)
