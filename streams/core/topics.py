"""Every topic restyle uses exists, with the configured partition count, before any worker
subscribes or any client publishes: a consumer that subscribes to a missing topic is not
rebalanced when it appears later (Apache Kafka), and a topic auto-created by a first producer
gets the broker's default partition count instead of ours."""
from __future__ import annotations

import asyncio
import logging

from streams.core.kafka import client_options
from streams.core.settings import Settings

log = logging.getLogger("restyle.topics")


async def ensure_topics(settings: Settings, names: list[str], timeout_s: float = 60) -> list[str]:
    """Create the missing topics of names; returns the names created. Safe to run from many
    workers."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**client_options(settings),
                                request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        wanted = list(dict.fromkeys(names))
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            try:
                await admin.create_topics([NewTopic(name, settings.partitions,
                                                    settings.replication_factor,
                                                    topic_configs=topic_config(settings, name))
                                           for name in missing])
            except TopicAlreadyExistsError:
                pass  # another worker won the race
            log.info("created topics: %s", ", ".join(missing))
        await _until_visible(admin, wanted, timeout_s)
        return missing
    finally:
        await admin.close()


def topic_config(settings: Settings, name: str) -> dict[str, str]:
    # API key records and the model registry are state, not events: the latest record per
    # key must outlive any retention period (a revocation, a deletion included).
    if name in (settings.topics.api_keys, settings.topics.models):
        return {"cleanup.policy": "compact"}
    # A cancellation matters while its job could still run: no job runs for a week.
    if name == settings.topics.cancellations:
        return {"cleanup.policy": "compact,delete", "retention.ms": str(7 * 24 * 3600 * 1000)}
    return {}


async def _until_visible(admin, names: list[str], timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        missing = set(names) - set(await admin.list_topics())
        if not missing:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"topics not visible after {timeout_s:.0f}s: {sorted(missing)}")
        await asyncio.sleep(0.2)
