"""Agents in process, without Kafka: a small runtime that keeps every message an agent sends and
delivers it to the agents registered on that topic, through the real error policy
(Runtime.handle), with real storage and real (tiny) models.

It stands in for the broker only: what an agent decodes, refuses, dead-letters or sends is
restyle's own code. The end-to-end tests run the same agents on real brokers.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from pydantic import BaseModel

from agents.pipelines import topic_names
from streams.adapters.storage import Storage
from streams.core.app import Wiring
from streams.core.runtime import Runtime
from streams.core.settings import Settings
from streams.core.settings.broker import TopicNames


@dataclass
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = 0
    offset: int = 0
    headers: list = field(default_factory=list)
    timestamp: float = field(default_factory=time.time)


@dataclass
class Event:
    message: Message


class KeptTopic:
    """A topic whose sends are kept, in order, for the runtime to deliver."""

    def __init__(self, name: str, runtime: "InProcessRuntime"):
        self.name = name
        self.runtime = runtime

    def get_topic_name(self) -> str:
        return self.name

    async def send(self, key=None, value=None, headers=None):
        # Offsets count per topic, as a broker's do (a redelivery keeps its spot).
        self.runtime.record(Message(self.name, key, value,
                                    offset=len(self.runtime.sent(self.name)),
                                    headers=list(headers or [])))
        done = asyncio.get_running_loop().create_future()
        if self.name in self.runtime.acks_held:  # the broker has not answered yet
            self.runtime.acks_held[self.name].append(done)
        else:
            done.set_result(None)
        return done


class KeptConsumer:
    """What the runtime tells the consumer: the messages it holds back (never committed; a
    broker gives them again to the partition's owner)."""

    def __init__(self, runtime: "InProcessRuntime"):
        self.runtime = runtime
        self.held: list[Message] = []

    def hold_back(self, message: Message) -> None:
        self.held.append(message)

    def topic_partitions(self, topic: str) -> int:
        return 1  # every kept topic is one log

    def assignment(self) -> set:
        from aiokafka.structs import TopicPartition

        return {TopicPartition(name, 0) for name in self.runtime._by_name}


class KeptApp:
    """The part of a faust app the agents touch."""

    consumer_generation_id = 1

    def __init__(self, runtime: "InProcessRuntime"):
        self.runtime = runtime
        self.consumer = KeptConsumer(runtime)

    def topic(self, name: str, **_options) -> KeptTopic:
        return self.runtime.topic_named(name)

    async def crash(self, reason: BaseException) -> None:
        """faust's app stops the worker (its supervisor starts another): kept, to be read."""
        self.crashed = reason


@dataclass
class Registered:
    name: str
    handler: object
    model: type[BaseModel] | None
    batch: tuple[int, float] | None
    options: dict
    owns_table: bool = False


class InProcessRuntime(Runtime):
    def __init__(self, settings: Settings, topic_sets: list[TopicNames], journal=None):
        self.log: list[Message] = []
        # topic -> the acknowledgements of its sends, left for a test to give (or refuse):
        # only for the topics a test names here.
        self.acks_held: dict[str, list[asyncio.Future]] = {}
        self._delivered = 0  # how much of the log the agents have been given
        self.agents: dict[str, list[Registered]] = {}
        self._by_name: dict[str, KeptTopic] = {}
        channels = {name: self.topic_named(name)
                    for name in topic_names(settings, topic_sets)}
        super().__init__(settings, Wiring(app=KeptApp(self), channels=channels),
                         Storage.from_settings(settings), topic_sets, journal)

    def topic_named(self, name: str) -> KeptTopic:
        if name not in self._by_name:
            self._by_name[name] = KeptTopic(name, self)
        return self._by_name[name]

    def record(self, message: Message) -> None:
        self.log.append(message)

    def stage_agent(self, name, handler, model, topic, concurrency=1, batch=None,
                    chained=False, owns_table=False, **options) -> None:
        if chained:
            self.declare_chained(name, handler, model, topic, batch, options, owns_table)
        self.agents.setdefault(topic, []).append(Registered(name, handler, model, batch, options,
                                                            owns_table))

    def take_over_requests(self, topics, per_partition, job_id_of) -> None:
        """One process, no consumer group: no worker's requests are ever taken over (the end-to-
        end tests kill one: test_worker_restart_e2e.py)."""

    def sent(self, topic: str) -> list[Message]:
        """Every message sent to the topic named topic, in order."""
        return [m for m in self.log if m.topic == topic]

    async def deliver(self, topic: str, value: bytes | BaseModel, key: str = "") -> None:
        """Publish value on the topic named topic, as an upstream system would, and run until
        idle."""
        await self.topic_named(topic).send(key=key.encode(), value=value if isinstance(
            value, bytes) else value.model_dump_json().encode())
        await self.run_until_idle()

    async def run_until_idle(self) -> None:
        """Deliver every kept message that an agent listens to, in order, until none is left."""
        while self._delivered < len(self.log):
            message = self.log[self._delivered]
            self._delivered += 1
            for agent in self.agents.get(message.topic, []):
                event = Event(message)
                if agent.owns_table and await self.handled_in_process(message):
                    continue  # (as the runtime's agent does: see stage_agent)
                if agent.batch is None:
                    await self.handle(agent.name, event, agent.model, agent.handler,
                                      **agent.options)
                else:
                    await self._handle_batch(agent.name, [event], agent.model, agent.handler)
