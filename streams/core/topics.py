"""Every topic restyle uses exists, with the configured partition count, before any worker
subscribes or any client publishes: a consumer that subscribes to a missing topic is not
rebalanced when it appears later (Apache Kafka), and a topic auto-created by a first producer
gets the broker's default partition count instead of ours.

An existing topic with another partition count is refused: a job's key picks its partition, the
partition picks the worker that owns the job's state, and the status API routes a request by the
same arithmetic with RESTYLE_PARTITIONS. A mismatch would send jobs and status requests to
workers that know nothing of them."""
from __future__ import annotations

import asyncio
import logging

from streams.core.kafka import client_options
from streams.core.settings import Settings

log = logging.getLogger("restyle.topics")


class TopicLayoutError(RuntimeError):
    """Existing topics whose partition count is not RESTYLE_PARTITIONS."""


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
        check_layout(settings, await partition_counts(admin, wanted))
        return missing
    finally:
        await admin.close()


def topic_config(settings: Settings, name: str) -> dict[str, str]:
    # API key records and the model registry are state, not events: the latest record per
    # key must outlive any retention period (a revocation, a deletion included).
    if name in (settings.topics.api_keys, settings.topics.models):
        return {"cleanup.policy": "compact"}
    # A cancellation (a death) matters while its job could still run: no job runs for a week.
    if name in (settings.topics.cancellations, settings.topics.worker_deaths):
        return {"cleanup.policy": "compact,delete", "retention.ms": str(7 * 24 * 3600 * 1000)}
    return {}


async def partition_counts(admin, names: list[str]) -> dict[str, int]:
    return {described["topic"]: len(described["partitions"])
            for described in await admin.describe_topics(names)}


def check_layout(settings: Settings, counts: dict[str, int]) -> None:
    """Refuse topics whose partition count differs from RESTYLE_PARTITIONS (see the module's
    docstring), saying which and what to do."""
    # The compacted state topics are read whole by every worker: no key is routed by them.
    read_whole = {settings.topics.api_keys, settings.topics.models, settings.topics.cancellations,
                  settings.topics.worker_deaths}
    wrong = {name: count for name, count in counts.items()
             if count != settings.partitions and name not in read_whole}
    if not wrong:
        return
    listed = ", ".join(f"{name} has {count}" for name, count in sorted(wrong.items()))
    raise TopicLayoutError(
        f"topics exist with another partition count than RESTYLE_PARTITIONS="
        f"{settings.partitions}: {listed}. Jobs and status requests are routed by partition, so "
        f"every worker must agree with the topics: set RESTYLE_PARTITIONS to the topics' count, "
        f"or, to change it, start on new topics (RESTYLE_TOPIC_* names; see Scaling in the "
        f"README) once the old ones are drained.")


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
