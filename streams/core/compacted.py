"""A compacted topic held whole in each worker's memory: the latest record per key.

Each worker reads the whole topic (no consumer group: every worker needs every record), so any
worker answers for any key and a change reaches all of them within one fetch. A record written a
moment ago is found too: a lookup that misses waits until this reader has caught up with the
topic's end (read-your-writes). Used for the API keys (streams/api/auth/keyring.py) and the
avatar model registry.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel, ValidationError

log = logging.getLogger("restyle")
R = TypeVar("R", bound=BaseModel)

CATCH_UP_TIMEOUT_S = 3.0
ASSIGNMENT_TIMEOUT_S = 30.0
RETRY_S = 2.0


class CompactedView(Generic[R]):
    # What a worker does without the view (said in the log when reading fails).
    unavailable = "lookups answer 503"

    def __init__(self, connection: dict, topic: str, model: type[R]):
        """connection: aiokafka client options (streams.core.kafka.client_options); model:
        each record's type. A record's key on the topic is its key here."""
        self.connection, self.topic, self.model = connection, topic, model
        self.records: dict[str, R] = {}
        # Counts the changes to what the view holds: what is derived from the records (an
        # index) is rebuilt when it moved on
        self.version = 0
        # Where apply() writes: the records themselves, or, while the topic is read again
        # after a failure, a fresh reading that replaces them once it reaches the end.
        self._reading: dict[str, R] = self.records
        self.loaded = asyncio.Event()
        # Read to its end at least once since run() started (never cleared again).
        self.read_once = asyncio.Event()
        self.running = False  # run() started: the topic is being read
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._catching_up: asyncio.Task | None = None

    def get(self, key: str) -> R | None:
        return self.records.get(key)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Fold one topic message in: a record (the latest per key wins) or a tombstone."""
        if not key:
            return
        self.version += 1
        name = key.decode(errors="replace")
        if value is None:
            self._reading.pop(name, None)
            return
        try:
            record = self.model.model_validate_json(value)
        except ValidationError:
            # Whoever can write this topic is trusted by Kafka's ACLs; a malformed record is
            # skipped, never fatal.
            log.warning("skipped a malformed record on %s", self.topic)
            return
        self._reading[name] = record

    async def run(self) -> None:
        """Read the topic from the beginning, forever (a faust task of the worker). When
        reading fails (the broker, an ACL), the view reports itself not loaded (lookups are
        refused, not judged by a view that no longer sees changes), and the topic is read
        again from the start."""
        self.running = True
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading %s failed; %s until it is read again", self.topic,
                              self.unavailable)
                self.loaded.clear()
                await asyncio.sleep(RETRY_S)

    async def _follow(self) -> None:
        # What the topic says now, not what was read before a failure; until this reading
        # reaches the end, the last complete one answers get() (loaded says which is which:
        # a lookup that must be current, an API key, waits for it).
        self._reading = {}
        end = await self._open()
        try:
            while True:
                if not self.loaded.is_set() and await self._reached(end):
                    self.records = self._reading
                    self.version += 1
                    log.info("%s loaded: %d records", self.topic, len(self.records))
                    self.loaded.set()
                    self.read_once.set()
                await self._read(500)
        finally:
            await self._close()

    async def read_all(self) -> dict[str, R]:
        """Read the topic once, up to its end (for a CLI listing)."""
        self._reading = {}
        end = await self._open()
        try:
            while not await self._reached(end):
                await self._read(200)
            self.records = self._reading
            return self.records
        finally:
            await self._close()

    async def _open(self) -> dict:
        """Start a reader on every partition from the beginning; returns their end offsets."""
        # Subscribed without a group: aiokafka assigns this reader every partition itself.
        consumer = AIOKafkaConsumer(self.topic, **self.connection, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    fetch_max_wait_ms=200)
        await consumer.start()
        self._consumer = consumer
        deadline = asyncio.get_running_loop().time() + ASSIGNMENT_TIMEOUT_S
        while not consumer.assignment():
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"no partitions of {self.topic} after "
                                   f"{ASSIGNMENT_TIMEOUT_S:.0f}s: does the topic exist?")
            await asyncio.sleep(0.05)
        self._partitions = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*self._partitions)
        return await consumer.end_offsets(self._partitions)

    async def _read(self, timeout_ms: int) -> None:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms)
        for messages in batches.values():
            for message in messages:
                self.apply(message.key, message.value)

    async def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _reached(self, end: dict) -> bool:
        consumer = self._consumer
        for partition, offset in end.items():
            if await consumer.position(partition) < offset:
                return False
        return True

    async def catch_up(self) -> None:
        """Wait (bounded) until every record published before now has been read. Concurrent
        misses share one wait, so a flood of unknown keys costs one end-offset request at a
        time."""
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.ensure_future(self._catch_up())
        try:
            await asyncio.wait_for(asyncio.shield(self._catching_up), CATCH_UP_TIMEOUT_S)
        except asyncio.TimeoutError:
            pass

    async def _catch_up(self) -> None:
        consumer = self._consumer
        if consumer is None or not self._partitions:
            return
        end = await consumer.end_offsets(self._partitions)
        while not await self._reached(end):
            await asyncio.sleep(0.02)
