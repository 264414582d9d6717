"""What a worker's agents share: settings, storage, topics, and the one way every stage handles a
message (decode, call, emit; bad input to the DLQ or to a `failed` job, never a dead worker)."""
from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
import warnings
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Awaitable, Callable, Iterable, Mapping, NamedTuple, TypeVar
from urllib.parse import unquote

from pydantic import BaseModel, ValidationError

from schemas import (DeadLetter, ErrorCode, JobError, JobEvent, JobEventKind, JobStatus,
                     StageFailure)
from schemas.events import original_headers
from schemas.jobs import Cancellation, QueueSpot, WorkerDeaths
from schemas.uris import is_under, join_uri, tenant_base
from streams.adapters.images import decode_image, fit_within
from streams.adapters.journal import InFlightJournal, release_in_flight, spot_name
from streams.adapters.retries import current_policy, describe, rerun_wait, retry_policy
from streams.adapters.storage import Storage
from streams.core.app import Wiring
from streams.core.kafka import client_options
from streams.core.consumer import group_generation
from streams.core.copartition import lands_in_hand
from streams.core.owner_claims import Claim, OwnerClaims
from streams.core.pauses import OutOfGroup, PauseWatch
from streams.core.metrics import DEAD_LETTERS, STAGE_OUTCOMES, STAGE_SECONDS, STAGE_WAIT_SECONDS
from streams.core import deaths as worker_deaths, tracing
from streams.core.compacted import CompactedView
from streams.core.inherited import InheritedWork
from streams.core.registry import ModelRegistry
from streams.core.settings import Settings
from streams.core.settings.broker import TopicNames, Topics

log = logging.getLogger("restyle")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T", bound=TopicNames)

# How long a worker that has just started waits, before its first job, to have read every
# cancellation and every other host's count of worker deaths (a broker that answers reads them
# in well under a second).
CANCELLATIONS_FIRST_READ_S = 30.0
# What a worker that could not read the worker deaths in that time goes without (said once)
DEATHS_UNREAD = "a message that killed workers elsewhere is counted from its deaths here"


class JobCancelled(Exception):
    """The job was cancelled while a stage worked on it: the stage stops, nothing more is sent
    for it (the tracker has already ended it and said so)."""


class HandedBack(Exception):
    """The worker is shutting down: the stage stops and its message is neither finished nor
    failed nor committed, so another worker takes it."""


class Runtime:
    def __init__(self, settings: Settings, wiring: Wiring, storage: Storage,
                 topic_sets: Iterable[TopicNames] = (), journal: InFlightJournal | None = None):
        """topic_sets: each pipeline's topics (the shared ones are settings.topics); journal:
        where the messages in flight are recorded, so that one that kills the worker again and
        again is recognised (None: not recorded)."""
        self.settings = settings
        self.journal = journal
        self.app = wiring.app
        self.storage = storage
        self.channels = wiring.channels
        # The shared topics, as typed attributes (rt.topics.job_events); a pipeline's own come
        # from topics_of(ItsTopics).
        self.topics: Topics = settings.topics
        self._topic_sets = {type(topics): topics for topics in (settings.topics, *topic_sets)}
        self._images: OrderedDict[tuple[str, int | None], object] = OrderedDict()
        # topic -> the stage of this worker a send to it calls in-process (chaining).
        self._chained: dict[str, ChainedStage] = {}
        # The records a chained table owner was handed in-process (owner_claims.py).
        self._owner_claims = OwnerClaims()
        # Why this worker stopped for good (stop_worker), shown by /livez and /readyz.
        self.broken: str | None = None
        # Shutting down (SIGTERM): /readyz says so, and no new work is taken; once the grace
        # period is over, what still runs is handed back.
        self.draining = False
        self.handing_back = False
        self._in_flight = 0
        # Stopped past the session timeout (SIGSTOP, a stalled host): out of the group until
        # it rejoins, whatever its streams still hold (pauses.py).
        self.pauses = PauseWatch(settings.session_timeout_s,
                                 lambda: self.app.consumer_generation_id,
                                 heartbeat_interval_s=settings.heartbeat_interval_s,
                                 group_generation=lambda: group_generation(self.app))
        self.pauses.start()
        # The trained models (avatar adapters); read once the worker runs registry.run.
        self.registry = ModelRegistry(client_options(settings), settings.topics.models)
        # Cancelled jobs; read once the worker runs cancellations.run.
        self.cancellations = CompactedView(client_options(settings),
                                           settings.topics.cancellations, Cancellation)
        # Every host's count of the messages its workers died with (deaths.py); read once the
        # worker runs worker_deaths.run.
        self.worker_deaths = CompactedView(client_options(settings),
                                           settings.topics.worker_deaths, WorkerDeaths)
        self._deaths_at = worker_deaths.BySpot(self.worker_deaths)
        self._gave_up_on: set[str] = set()  # the views not read in time before a first job

    def cancelled(self, job_id: str | None) -> bool:
        return job_id is not None and job_id in self.cancellations.records

    async def cancellations_known(self) -> None:
        """Before a worker's first job: wait (bounded) until it has read every cancellation,
        or a job cancelled or timed out before it started would run here."""
        await self._read_before_first_job(self.cancellations, "jobs run without knowing "
                                          "whether they were cancelled before now")

    async def _read_before_first_job(self, view: CompactedView, without: str) -> None:
        """Wait (bounded) until the view has read its topic once. Past the bound the worker
        goes on with what it has read (its reader keeps reading) and says once what that
        costs (without)."""
        if view.read_once.is_set() or not view.running or view.topic in self._gave_up_on:
            return
        try:
            await asyncio.wait_for(view.read_once.wait(), CANCELLATIONS_FIRST_READ_S)
        except asyncio.TimeoutError:
            if view.topic not in self._gave_up_on:
                log.warning("%s could not be read within %g s: %s", view.topic,
                            CANCELLATIONS_FIRST_READ_S, without)
            self._gave_up_on.add(view.topic)

    async def tell_deaths(self) -> None:
        """At start (a task of a worker with a journal): tell the other workers of the
        messages the processes before this one died with (deaths.py), and of those left in
        the slots of this role's workers that did not start again. A failure leaves this
        worker's deaths counted by itself only."""
        if not self.journal:
            return
        # What was forgiven since (finished by another worker) is not told again
        await self._read_before_first_job(self.worker_deaths, DEATHS_UNREAD)
        left = {self.journal.identity: dict(self.journal.inherited), **self.journal.unheld()}
        for identity, spots in left.items():
            for spot in worker_deaths.finished_elsewhere(
                    self.worker_deaths.records, spots, identity,
                    lambda spot, identity=identity: self.journal.written_at(identity, spot),
                    self.settings.clock_skew_s):
                del spots[spot]
                if identity == self.journal.identity:
                    self.journal.forget(spot)  # nor kept here (another slot's is its own)
        now = time.time()
        telling = [told for identity, deaths in left.items() if deaths
                   for told in worker_deaths.told(deaths, identity, now)]
        if not telling:
            return
        try:
            await self.send_together(self.topics.worker_deaths, telling)
        except Exception as exc:  # noqa: BLE001 - its own deaths are still counted here
            log.warning("could not tell the other workers of the %d message(s) workers died "
                        "with here (%s: %s); they count only their own", len(telling),
                        type(exc).__name__, exc)
            return
        log.warning("workers of this role died here with %d message(s) in flight (%s): told "
                    "the other workers", len(telling),
                    ", ".join(sorted({record.spot for _, record in telling})))

    def _deaths_of(self, spot: tuple[str, str, int, int], message) -> int:
        """How many worker processes died running the message at spot: in this journal (which
        records this start) and in every other (deaths.py)."""
        here = self.journal.started(*spot)
        name, identity = spot_name(*spot), self.journal.identity
        records = self._deaths_at(name)
        if not records:
            return here
        since = (getattr(message, "timestamp", None) or 0.0) - self.settings.clock_skew_s
        # What this journal told of it stands even where the journal let it go since (the
        # message was handed back, or left to a partition's new owner, in between)
        told_here = records.get(worker_deaths.key_of(name, identity))
        if told_here is not None and told_here.at >= since:
            here = max(here, told_here.deaths)
        return here + worker_deaths.elsewhere(records, name, identity, since)

    async def _forgive(self, spot: tuple[str, str, int, int]) -> None:
        """The message ran to its end after deaths: every host's count of it goes back to 0
        (best effort: a count left standing is of a message that does not come back)."""
        name = spot_name(*spot)
        # What this worker told at start, whether or not its reader has read it back yet
        records = {**self._deaths_at(name), **dict(worker_deaths.told(
            {name: self.journal.inherited[name]} if name in self.journal.inherited else {},
            self.journal.identity, 0.0))}
        try:
            await self.send_together(self.topics.worker_deaths,
                                     worker_deaths.forgiven(records, name, time.time()))
        except Exception as exc:  # noqa: BLE001
            log.warning("could not forgive %s its deaths (%s)", name, exc)

    def check_cancelled(self, job_id: str | None, hand_back_at_once: bool = False) -> None:
        """Between two steps of a long stage (denoising, training): raise JobCancelled if the
        job was cancelled, HandedBack if the worker is shutting down and the work cannot
        wait (hand_back_at_once: a training, which would never finish in the grace period)."""
        if self.cancelled(job_id):
            raise JobCancelled(job_id)
        if self.handing_back or (hand_back_at_once and self.draining):
            raise HandedBack(job_id)

    async def drain(self, grace_s: float) -> None:
        """Stop taking work; give what is in flight grace_s to finish, then hand back what
        still runs (it stops at its next step). The worker then commits and leaves."""
        self.draining = True
        log.info("shutting down: no new work; %d message(s) in flight get %g s to finish",
                 self._in_flight, grace_s)
        deadline = time.monotonic() + grace_s
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self._in_flight:
            self.handing_back = True
            log.warning("handing back %d message(s) still in flight: another worker takes "
                        "them", self._in_flight)
            until = time.monotonic() + 10  # each stops at its next step
            while self._in_flight and time.monotonic() < until:
                await asyncio.sleep(0.1)
        # What is held now (handed back, or taken from the buffer after the signal) is never
        # acknowledged: faust must commit what is done and stop, not wait for it (it is read
        # when the consumer stops, so changing it now is safe).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.app.conf.stream_wait_empty = False
        self.pauses.leaving()
        log.info("shutting down: committing and leaving the group")

    async def _held(self, event) -> None:
        """Keep a message this worker will not finish until it stops; it is then delivered
        again, to another worker. faust would acknowledge it as its agent stops (and commit
        it): marked acknowledged already, it never counts as done."""
        event.message.acked = True
        await asyncio.get_running_loop().create_future()

    def topics_of(self, kind: type[T]) -> T:
        """A pipeline's topics, as the worker resolved their names."""
        return self._topic_sets[kind]

    def base_for(self, tenant: str | None) -> str:
        """Where this tenant's uploads, results and reports are written."""
        return tenant_base(self.settings.results_base, tenant, self.settings.default_tenant)

    def check_input(self, uri: str, tenant: str | None) -> None:
        """Refuse an input (an image, a mask, a prefix) an API caller names that the deployment
        or its tenant may not read (StageFailure URI_REFUSED): a scheme, path or bucket
        restyle may not use; for a named tenant, anything in the storage base outside its own
        folder, or a bucket outside its RESTYLE_TENANT_BUCKETS. The default tenant reads
        whatever the deployment may. (Kafka producers are trusted to name inputs: admission
        applies the deployment's rules only.)"""
        self.storage.police(uri)
        settings = self.settings
        if tenant is None or tenant == settings.default_tenant:
            return
        if is_under(uri, self.base_for(tenant)):
            return
        storage_base = settings.results_base
        if is_under(uri, storage_base) or unquote(uri).rstrip("/") == storage_base:
            # The storage base holds the default tenant's files and every tenant's folder.
            raise StageFailure(ErrorCode.URI_REFUSED,
                               f"{uri!r} is outside this tenant's storage "
                               f"({self.base_for(tenant)}/)")
        if ".." in unquote(uri).split("/"):
            raise StageFailure(ErrorCode.URI_REFUSED, f"{uri!r} climbs out of its prefix")
        allowed = settings.tenant_buckets.get(tenant)
        bucket = uri[5:].split("/", 1)[0] if uri.startswith("s3://") else None
        if allowed is not None and bucket not in allowed:
            raise StageFailure(ErrorCode.URI_REFUSED,
                               f"{uri!r}: tenant {tenant!r} reads only its own storage and "
                               f"the buckets {sorted(allowed)} (RESTYLE_TENANT_BUCKETS)")

    def channel(self, name: str):
        """The topic named name: one the worker declared, or one a request names (a reply
        topic), declared on first use and kept."""
        if name not in self.channels:
            self.channels[name] = self.app.topic(name, key_serializer="raw",
                                                 value_serializer="raw",
                                                 partitions=self.settings.partitions)
        return self.channels[name]

    # --- sending ---
    async def send(self, topic: str, key: str, model: BaseModel, headers=None,
                   acknowledged: bool = False, to_table_owner: bool = False):
        """Publish model keyed by key on the topic named topic (rt.topics.results,
        rt.topics_of(...).mask, a reply topic a request names). While a stage handles a
        message, handle() waits for the broker to acknowledge every send before the message
        counts as done; acknowledged=True waits here, for an event that must land before what
        is sent next to another topic. Returns what the send's acknowledgement resolves to
        (the record's partition and offset) when awaited. to_table_owner: a stage chained on
        topic that owns a table (the tracker) may take it in-process, where that is safe
        (copartition.py), without waiting for the hop; the record is still written, for the
        topic's other readers. Without it, such a stage always reads it from its topic."""
        if _unacknowledged.get() is not None:
            # For the message being handled: not once a stop has cost the worker its group
            # (its new owner sends the same; the message is held back: pauses.py).
            self.pauses.ensure_in_group()
        if "sent_at" in type(model).model_fields:  # lets the next stage measure its queue wait
            model.sent_at = time.time()
        stage = self._chained_on(topic, key, headers is None and not acknowledged,
                                 to_table_owner)
        if stage is not None:
            # Chained: the handling stage calls it once it has finished (handle()), on a copy
            # (what it would have read from the topic), under the same input message.
            handed = model.model_copy(deep=True) if isinstance(model, stage.model) \
                else validate(model.model_dump(mode="json"), stage.model)
            # The next stage's span is a child of this one's, as it would be through the topic.
            sender = tracing.outgoing_headers()
            if not stage.owns_table:
                _chain.get().append(Handoff(stage, handed, None, sender))
                return _settled_send()
            # A table owner's topic is a public one (job-events): the record is written all
            # the same, in its place among the job's events, marked; the owner's agent passes
            # it by if the in-process call handled it (owner_claims.py).
            headers = sender + [HANDLED_IN_PROCESS]
            value = model.model_dump_json().encode()
            _chain.get().append(Handoff(
                stage, handed, self._owner_claims.open(topic, key.encode(), value), sender))
        else:
            value = model.model_dump_json().encode()
        pending = await self.channel(topic).send(key=key.encode(), value=value,
                                                 headers=tracing.outgoing_headers()
                                                 if headers is None else headers)
        waiting = _unacknowledged.get()
        if acknowledged:
            await settle([(topic, pending)])
        elif waiting is not None:
            waiting.append((topic, pending))
        return pending

    async def handled_in_process(self, message) -> bool:
        """Whether a table owner's agent passes message by: a record this worker handed the
        owner in-process as it wrote it, and that call handled it (owner_claims.py)."""
        return _marked(message) and await self._owner_claims.handled_here(
            message.topic, message.key, message.value)

    def _chained_on(self, topic: str, key: str, plain: bool,
                    to_table_owner: bool) -> ChainedStage | None:
        """The stage a send to topic calls in-process instead, if any: only while a stage
        handles a message, for a plain send (no headers of its own, nothing waiting for the
        broker's acknowledgement), and for a stage that owns a table only when the send asks
        and the write lands where the topic would have put it."""
        stage = self._chained.get(topic)
        if stage is None or _chain.get() is None or not plain:
            return None
        in_hand = _in_hand.get()
        if stage.owns_table and not (to_table_owner and lands_in_hand(
                self.app.consumer, topic, key, in_hand.spot[2] if in_hand else None)):
            return None
        return stage

    async def send_together(self, topic: str, records: list[tuple[str, BaseModel]]) -> None:
        """Publish every (key, model) of records on topic, then wait for the broker to
        acknowledge them all: one round trip for the lot, not one per record. For a topic no
        stage is chained to (a chained send places no record for the broker to acknowledge)."""
        await settle([(topic, await self.send(topic, key, model)) for key, model in records])

    async def publish_upload(self, key: str, event: bytes) -> None:
        """An upload event as an upstream system publishes it (JSON the intake validates), from
        the status API: with the request's trace context, so the job continues its trace."""
        await self.channel(self.topics.uploads).send(key=key.encode(), value=event,
                                                     headers=tracing.outgoing_headers())

    async def queued_for_gpu(self, job_id: str, request_sent, **shown) -> None:
        """The job waits for a GPU worker (or a trainer): say so, with where its request
        waits once the broker has it (request_sent: what send returned for it) and what the
        job's stages found that its state shows from now on (shown: JobEvent fields)."""
        await settle([("the GPU request topic", request_sent)])
        placed = request_sent.result()
        spot = None
        if getattr(placed, "offset", None) is not None:
            spot = QueueSpot(topic=placed.topic, partition=placed.partition,
                             offset=placed.offset)
        await self.job_event(job_id, JobEventKind.STATUS, status=JobStatus.QUEUED_FOR_GPU,
                             queue=spot, **shown)

    async def job_event(self, job_id: str, kind: JobEventKind, acknowledged: bool = False,
                        at: float | None = None, to_tracker: bool = False, **fields) -> None:
        """at: when it happened (now, unless said). to_tracker: the tracker may take it
        in-process, where this worker owns the job's partition (a job's start or end, on the
        path a job waits on; the events along the way go through the topic, which the tracker
        reads while the stages work)."""
        await self.send(self.topics.job_events, job_id,
                        JobEvent(job_id=job_id, kind=kind, at=time.time() if at is None else at,
                                 **fields),
                        acknowledged=acknowledged, to_table_owner=to_tracker)

    def take_over_requests(self, topics: Iterable[str], per_partition: int,
                           job_id_of: Callable[[bytes], str]) -> None:
        """For a worker that renders or trains: the jobs of the requests it takes over from a
        worker that died holding them show as waiting for a worker again, not as rendering
        (inherited.py). per_partition: how many requests a worker takes ahead of the commit;
        job_id_of: a request's job id, from its record (ValueError: not a request)."""
        async def requeued(job_id: str, spot: QueueSpot, at: float) -> None:
            await self.job_event(job_id, JobEventKind.REQUEUED, queue=spot, at=at)

        work = InheritedWork(client_options(self.settings), self.app.conf.id, topics,
                             per_partition, job_id_of, requeued)

        @self.app.on_partitions_assigned.connect
        async def take_over(_sender=None, assigned=None, **_kwargs) -> None:
            work.assigned(assigned, group_generation(self.app))

    async def fail(self, job_id: str, error: JobError, tenant: str | None = None,
                   kind: JobEventKind = JobEventKind.FAILED, **fields) -> None:
        await self.job_event(job_id, kind, error=error, tenant=tenant, **fields)

    async def dead_letter(self, message, code: ErrorCode, reason: str,
                          job_id: str | None = None, attempts: int = 1) -> None:
        """Put the message on the DLQ as it was (key, value, headers), with what went wrong in
        restyle-dlq-* headers; acknowledged by the broker before this returns. An original too
        large to fit beside its headers is kept in object storage and named instead. Not once
        the worker is out of its group (OutOfGroup): the message is its new owner's."""
        self.pauses.ensure_in_group()
        raw = message.value if isinstance(message.value, bytes) else bytes(message.value or b"")
        key = message.key if isinstance(message.key, bytes) else None
        letter = DeadLetter(source_topic=message.topic, partition=message.partition,
                            offset=message.offset,
                            key=key.decode(errors="replace") if key is not None else None,
                            code=code.value, reason=reason, job_id=job_id, attempts=attempts,
                            at=time.time())
        if len(raw) > self.settings.dlq_max_inline_bytes:
            letter.original_uri = join_uri(self.settings.results_base, "dlq", message.topic,
                                           f"{message.partition}-{message.offset}")
            await self.storage.put(letter.original_uri, raw)
            raw = b""
        DEAD_LETTERS.labels(message.topic, code.value).inc()
        log.warning("dead letter from %s@%s: %s", message.topic, message.offset, reason)
        headers = original_headers(as_header_list(message.headers)) + letter.headers()
        # The original key, byte for byte (none stays none: its job id is in a header), so a
        # replay lands where the original did.
        pending = await self.channel(self.topics.dlq).send(key=key, value=raw, headers=headers)
        await settle([(self.topics.dlq, pending)])

    # --- the one way a stage handles a message ---
    async def handle(self, stage: str, event, model: type[M] | None,
                     handler: Callable[[M], Awaitable[None]], fail_jobs: bool = True,
                     on_failure: Callable[[M, JobError], Awaitable[None]] | None = None,
                     on_undecodable: Callable[[bytes | None, JobError], Awaitable[None]]
                     | None = None, follows_cancellations: bool = True) -> None:
        """Decode event's message as `model` (None: pass the raw message, for intakes that
        decode it themselves) and run handler on it. Undecodable → DLQ, then
        on_undecodable(raw, error) when given (to tell whoever waits on it, if it can be
        identified). A StageFailure or an unexpected error → on_failure(decoded, error) when
        given, else the job fails (or, with fail_jobs=False or no job, the message goes to the
        DLQ). A message for a cancelled job is dropped (follows_cancellations; the trackers,
        which must still see such jobs' events, turn it off), and a JobCancelled raised by the
        handler stops it quietly. An unexpected error runs the handler again (up to
        RESTYLE_STAGE_ATTEMPTS in all); what it sends is acknowledged by the broker before the
        message counts as done. While the worker shuts down, a message is not started, and one
        handed back (HandedBack) is held unacknowledged for the next worker. The stages the
        handler hands the job to in-process (chained: see stage_agent) run next, each under
        this same policy and this same message."""
        if self.pauses.out_of_group():
            # Fetched before the stop; the partition's owner handles it now (not this one).
            self.app.consumer.hold_back(event.message)
            return
        if self.draining:
            await self._held(event)  # taken from the buffer after SIGTERM: never started
        if self.journal:
            await self._read_before_first_job(self.worker_deaths, DEATHS_UNREAD)
            if self.draining:  # SIGTERM came while it waited: not started
                await self._held(event)
        self._in_flight += 1
        message = event.message
        spot = (stage, message.topic, message.partition, message.offset)
        deaths = self._deaths_of(spot, message) if self.journal else 0
        in_hand = _in_hand.set(InHand(spot, deaths))
        try:
            await self._handle(stage, event, model, handler, fail_jobs, on_failure,
                               on_undecodable, follows_cancellations, deaths)
            if 0 < deaths < self.settings.crash_attempts:  # (at the limit it failed its job)
                await self._forgive(spot)
            return
        except OutOfGroup as out:
            # Stopped in the middle of it: what it wrote before the stop stands (a new owner
            # writes the same again), the rest is its new owner's (pauses.py).
            log.warning("%s: %s; message %s[%d]@%d is left to the partition's owner", stage,
                        out, message.topic, message.partition, message.offset)
            self.app.consumer.hold_back(message)
            return
        except HandedBack as back:
            log.info("%s: handed back (the worker is shutting down)", stage)
            job_id = back.args[0] if back.args else None
            if job_id:  # it waits for a worker again: queue time, not a stall
                message = event.message
                await self.job_event(job_id, JobEventKind.REQUEUED, queue=QueueSpot(
                    topic=message.topic, partition=message.partition, offset=message.offset),
                    acknowledged=True)
        finally:
            _in_hand.reset(in_hand)
            self._in_flight -= 1
            if self.journal:
                self.journal.finished(*spot)
        await self._held(event)

    async def _handle(self, stage, event, model, handler, fail_jobs, on_failure,
                      on_undecodable, follows_cancellations, deaths: int) -> None:
        message = event.message
        try:
            decoded = message if model is None else decode(message.value, model)
        except StageFailure as failure:
            STAGE_OUTCOMES.labels(stage, "dead_letter").inc()
            await self._dead_letter_or_stop(message, failure.error, on_undecodable)
            return
        step = ChainedStage(stage, handler, model, fail_jobs, on_failure, follows_cancellations)
        unsettled: list[Unsettled] = []
        token = _chain_unsettled.set(unsettled)
        try:
            chain = await self._traced(step, message, decoded, deaths)
            try:
                while chain:  # the stages this one handed the job to in-process, in order
                    step, decoded, claim, sender = chain[0]
                    if self.handing_back:  # the grace period is over: the next worker reruns it
                        raise HandedBack(getattr(decoded, "job_id", None))
                    if claim is not None:  # failed here, it is the owner agent's (owner_claims)
                        step = replace(step, on_failure=_refusing(claim))
                    following = await self._traced(step, message, decoded, sender=sender)
                    chain.pop(0)
                    if claim is not None:
                        claim.handled()
                    chain[:0] = following
            finally:
                _refuse_all(chain)  # (what a stop or a hand-back left unrun)
        finally:
            _chain_unsettled.reset(token)
        await self._settle_chain(message, unsettled)

    async def _settle_chain(self, message, unsettled: list[Unsettled]) -> None:
        """The acknowledgements the chain's stages left unsettled, each stage's in turn: one
        not given fails that stage's job, as it would have failed the stage."""
        for left in unsettled:
            try:
                await settle(left.sends)
            except StageFailure as failure:
                await self._stage_failed(left.step, message, left.decoded, failure)

    async def _stage_failed(self, step: ChainedStage, message, decoded,
                            failure: StageFailure) -> None:
        """A stage failed its job (a StageFailure from its handler or its sends): counted,
        said, and the job failed under the stage's policy."""
        job_id = getattr(decoded, "job_id", None)
        STAGE_OUTCOMES.labels(step.name, "failed").inc()
        log.info("job %s failed in %s: %s", job_id, step.name, failure.error.message)
        await self._failed(message, job_id, failure.error, decoded, step.fail_jobs,
                           step.on_failure)

    async def _traced(self, step: ChainedStage, message, decoded, deaths: int = 0,
                      sender: list[tuple[str, bytes]] | None = None) -> list:
        """_run in the stage's span, child of the span that sent the message (its headers),
        or for a chained stage of the span of the stage that handed it the job (sender)."""
        key = message.key.decode(errors="replace") if isinstance(message.key, bytes) else None
        with tracing.stage_span(step.name, message.topic, message.partition, message.offset,
                                as_header_list(message.headers) if sender is None else sender,
                                getattr(decoded, "job_id", None) or key):
            return await self._run(step, message, decoded, deaths)

    async def _run(self, step: ChainedStage, message, decoded, deaths: int = 0) -> list:
        """Run one stage on a decoded message (read from its topic, or handed over by the
        stage before it in a chain; message is the input that started it either way).
        Returns the chained stages it handed work to, to run next."""
        stage, handler = step.name, step.handler
        fail_jobs, on_failure = step.fail_jobs, step.on_failure
        started = time.perf_counter()
        job_id = getattr(decoded, "job_id", None)
        if step.follows_cancellations:
            await self.cancellations_known()
        if step.follows_cancellations and self.cancelled(job_id):
            STAGE_OUTCOMES.labels(stage, "cancelled").inc()
            log.info("job %s is cancelled: %s does not start it", job_id, stage)
            return []
        sent_at = getattr(decoded, "sent_at", None)
        if sent_at:
            waited = max(0.0, time.time() - sent_at)
            STAGE_WAIT_SECONDS.labels(stage).observe(waited)
            if isinstance(getattr(decoded, "waits_ms", None), dict):
                decoded.waits_ms[stage] = round(waited * 1000, 2)
        attempts = self.settings.stage_attempts
        if deaths >= self.settings.crash_attempts:  # the worker died each time: not again
            STAGE_OUTCOMES.labels(stage, "crashed").inc()
            log.error("job %s: the worker died %d times running %s on this message (topic %s, "
                      "partition %d, offset %d); it is not run again", job_id, deaths, stage,
                      message.topic, message.partition, message.offset)
            error = JobError(code=ErrorCode.WORKER_CRASHED, attempts=deaths, message=(
                f"{stage}: the worker stopped {deaths} times while it ran this job (killed, "
                f"crashed or its device failed; out of memory is the usual cause); it is not "
                f"run again"))
            await self._failed(message, job_id, error, decoded, fail_jobs, on_failure)
            return []
        try:
            with retry_policy(self.settings.retry_policy(stage)):
                for attempt in range(1, attempts + 1):
                    following: list = []  # what this attempt chains to; dropped if it fails
                    token, kept = _chain.set(following), False
                    try:
                        # A stage that hands the job on in-process does not hold the next one
                        # back while the broker acknowledges its sends: they are settled once
                        # the chain has run, before its message counts as done (_settle_chain).
                        async with acknowledged_sends(
                                lambda sends: _defer_to_chain(step, decoded, sends, following)):
                            await handler(decoded)
                        STAGE_OUTCOMES.labels(stage, "ok").inc()
                        kept = True
                        return following
                    except StageFailure as failure:
                        await self._stage_failed(step, message, decoded, failure)
                        return []
                    except JobCancelled:
                        STAGE_OUTCOMES.labels(stage, "cancelled").inc()
                        log.info("job %s was cancelled during %s: stopped", job_id, stage)
                        return []
                    except (asyncio.CancelledError, HandedBack, OutOfGroup):
                        raise
                    except Exception as exc:  # a bug or a model error: the worker lives
                        # An error after a stop that cost the worker its group (a send or a
                        # read that timed out while it was stopped) is its new owner's to
                        # have or not: neither retried nor failed here.
                        self.pauses.ensure_in_group()
                        if attempt < attempts and not self.cancelled(job_id):
                            STAGE_OUTCOMES.labels(stage, "retried").inc()
                            log.warning("job %s: %s raised %s (attempt %d of %d); running it "
                                        "again", job_id, stage, type(exc).__name__, attempt,
                                        attempts, exc_info=True)
                            await asyncio.sleep(rerun_wait(current_policy(), attempt))
                            continue
                        STAGE_OUTCOMES.labels(stage, "error").inc()
                        log.exception("job %s: unexpected error in %s", job_id, stage)
                        times = f" (attempt {attempt} of {attempts})" if attempts > 1 else ""
                        error = JobError(code=ErrorCode.INTERNAL, attempts=attempt,
                                         message=f"{stage} stage error{times}: "
                                                 f"{type(exc).__name__}: {exc}")
                        await self._failed(message, job_id, error, decoded, fail_jobs,
                                           on_failure)
                    finally:
                        _chain.reset(token)
                        if not kept:
                            _refuse_all(following)
            return []
        finally:
            STAGE_SECONDS.labels(stage).observe(time.perf_counter() - started)

    def stage_agent(self, name: str, handler, model: type[BaseModel] | None, topic: str,
                    concurrency: int = 1, batch: tuple[int, float] | None = None,
                    chained: bool = False, owns_table: bool = False, **options) -> None:
        """The one way an agent is made: a faust agent named `name` on the topic named `topic`
        that runs every message through handle(name, ..., handler).
        batch=(size, seconds): handler takes the decoded messages of up to `size` at a time (or
        what arrived within `seconds`); the undecodable ones go to the DLQ, and a batch whose
        handler raises has each of its messages dead-lettered with the cause.
        chained: a stage of this worker that sends to `topic` calls this one in-process
        instead (RESTYLE_CHAIN_STAGES, RESTYLE_UNCHAINED_STAGES); for a stage whose input
        comes from the stage before it in the same pipeline and role, not for one that takes
        batches. The agent still consumes the topic. owns_table: a chained stage that writes
        a table is called in-process only by the sends that ask for it (to_table_owner), and
        only where its table write lands in the partition its topic would give (copartition.py).
        """
        if chained:
            self.declare_chained(name, handler, model, topic, batch, options, owns_table)
        async def agent(stream):
            if batch is None:
                async for event in stream.events():
                    if owns_table and await self.handled_in_process(event.message):
                        continue
                    await self.handle(name, event, model, handler, **options)
            else:
                async for events in stream.take_events(*batch):
                    await self._handle_batch(name, events, model, handler)

        agent.__name__ = agent.__qualname__ = name  # how faust names it in logs
        self.app.agent(self.channels[topic], name=name, concurrency=concurrency)(agent)

    def declare_chained(self, name: str, handler, model: type[BaseModel] | None, topic: str,
                        batch: tuple[int, float] | None, options: dict,
                        owns_table: bool = False) -> None:
        """Sends to `topic` call stage `name` in-process, unless it takes raw messages or
        batches, or chaining is off or split there (RESTYLE_CHAIN_STAGES,
        RESTYLE_UNCHAINED_STAGES). options: handle()'s, as stage_agent got them."""
        settings = self.settings
        if model is None or batch is not None or not settings.chain_stages \
                or name in settings.unchained_stages:
            return
        policy = {k: v for k, v in options.items() if k in ChainedStage.__dataclass_fields__}
        self._chained[topic] = ChainedStage(name, handler, model, owns_table=owns_table,
                                            **policy)

    async def _handle_batch(self, stage: str, events, model: type[M],
                            handler: Callable[[list[M]], Awaitable[None]]) -> None:
        """A batch stage's messages: the undecodable ones dead-lettered, the rest handed to
        handler together (all dead-lettered if it raises). Out of its group (OutOfGroup,
        wherever in the batch), the worker leaves what it has not dead-lettered yet to the
        partitions' owners, as handle does."""
        left = list(events)  # not dead-lettered yet
        try:
            self.pauses.ensure_in_group()  # (as in handle: a batch taken after a stop)
            await self._handle_batch_in_group(stage, left, model, handler)
        except OutOfGroup as out:
            log.warning("%s: %s; %d message(s) of a batch are left to the partitions' owners",
                        stage, out, len(left))
            for event in left:
                self.app.consumer.hold_back(event.message)

    async def _handle_batch_in_group(self, stage: str, left: list, model: type[M],
                                     handler: Callable[[list[M]], Awaitable[None]]) -> None:
        """_handle_batch's work; each message dead-lettered is taken out of left."""
        async def dead_letter(event, code: ErrorCode, reason: str) -> None:
            await self._dead_letter_or_stop(event.message, JobError(code=code, message=reason))
            if not self.broken:  # not written, the worker stopping: left for the next one
                left.remove(event)

        started = time.perf_counter()
        decoded = []
        for event in list(left):
            try:
                decoded.append((event, decode(event.message.value, model)))
            except StageFailure as failure:
                STAGE_OUTCOMES.labels(stage, "dead_letter").inc()
                await dead_letter(event, failure.error.code, failure.error.message)
        if not decoded:
            return
        try:
            with tracing.batch_span(stage, decoded[0][0].message.topic,
                                    [as_header_list(event.message.headers)
                                     for event, _ in decoded]), \
                    retry_policy(self.settings.retry_policy(stage)):
                async with acknowledged_sends():
                    await handler([item for _, item in decoded])
            STAGE_OUTCOMES.labels(stage, "ok").inc(len(decoded))
        except (asyncio.CancelledError, OutOfGroup):
            raise
        except StageFailure as failure:  # the batch failed for a cause it names: kept with it
            self.pauses.ensure_in_group()
            STAGE_OUTCOMES.labels(stage, "failed").inc(len(decoded))
            log.warning("%s failed on a batch of %d: %s", stage, len(decoded),
                        failure.error.message)
            for event, _ in decoded:
                await dead_letter(event, failure.error.code, failure.error.message)
        except Exception as exc:  # a bug: keep every message of the batch, the worker lives
            # (As in handle: an error after a stop that cost the worker its group may be the
            # stop's; the batch is then the partitions' owners'.)
            self.pauses.ensure_in_group()
            STAGE_OUTCOMES.labels(stage, "error").inc(len(decoded))
            log.exception("unexpected error in %s on a batch of %d", stage, len(decoded))
            for event, _ in decoded:
                await dead_letter(event, ErrorCode.INTERNAL,
                                  f"{stage} stage error: {type(exc).__name__}: {exc}")
        finally:
            STAGE_SECONDS.labels(stage).observe(time.perf_counter() - started)

    async def _failed(self, message, job_id: str | None, error: JobError, decoded,
                      fail_jobs: bool, on_failure=None) -> None:
        """Say the job failed (or dead-letter its message), acknowledged by the broker. If the
        broker takes neither the work nor its failure, the worker stops: its message is not
        committed, and a healthy worker takes it over. Nothing is said once the worker is out of
        its group (OutOfGroup): the failure may be the stop's, and the job is its new owner's."""
        self.pauses.ensure_in_group()
        token = _chain.set(None)  # what a failure sends goes to its topics, never chained
        try:
            async with acknowledged_sends():
                if on_failure is not None:
                    await on_failure(decoded, error)
                elif fail_jobs and job_id:
                    await self.fail(job_id, error, getattr(decoded, "tenant", None))
                else:
                    await self.dead_letter(message, error.code, error.message, job_id,
                                           error.attempts or 1)
        except StageFailure as unsent:
            # (Unless the stop cost it its group: then the failure's send timed out with it,
            # and the job is its new owner's.)
            self.pauses.ensure_in_group()
            await self.stop_worker(f"job {job_id}: its failure could not be published "
                                   f"({unsent.error.message})")
        finally:
            _chain.reset(token)

    async def _dead_letter_or_stop(self, message, error: JobError,
                                   on_undecodable=None) -> None:
        """message to the DLQ with error (then on_undecodable(raw, error) where given, to
        tell whoever waits on an undecodable one). If the broker (or, for a large original, the
        storage) takes neither, the worker stops, as in _failed: its message is not committed,
        and a healthy worker takes it over."""
        try:
            await self.dead_letter(message, error.code, error.message)
            if on_undecodable is not None:
                await on_undecodable(message.value, error)
        except StageFailure as unsent:
            self.pauses.ensure_in_group()
            await self.stop_worker(f"{message.topic} offset {message.offset} could not be "
                                   f"dead-lettered ({unsent.error.message})")

    async def stop_worker(self, reason: str) -> None:
        """Stop this worker for good (it exits; its supervisor starts it again): for a fault
        no message caused and none can survive, such as a broker that takes no sends or a
        broken GPU. What it had not committed is delivered again, to whichever worker holds
        the partitions next."""
        log.critical("stopping the worker: %s", reason)
        self.broken = reason
        self.pauses.leaving()
        release_in_flight()  # the messages in flight did not cause this
        await self.app.crash(RuntimeError(reason))

    async def image_uncached(self, uri: str, at_least: int | None = None,
                             carried: Mapping[str, bytes] | None = None,
                             mode: str | None = None):
        """The decoded image at uri, for images read once (catalog products): not cached.
        at_least lets a JPEG decode at a reduced scale (see decode_image). carried: the images
        the message in hand carries (schemas.events.CarriedImages); one there is not read from
        storage. mode: converted to it (in the decoding thread, not on the event loop)."""
        data = carried.get(uri) if carried else None
        if data is None:
            data = await self.storage.get(uri, self.settings.max_image_bytes)
        max_pixels = self.settings.max_image_pixels

        def decoded():
            image = decode_image(data, max_pixels, uri, at_least)
            return image if mode is None else image.convert(mode)
        return await asyncio.to_thread(decoded)

    def to_carry(self, encoded: Mapping[str, bytes]) -> dict[str, bytes]:
        """Of these encoded images (by URI, in order), those one message carries beside their
        URIs: as many as fit RESTYLE_CARRY_IMAGE_MAX_BYTES together (a budget per message, so
        a reply with many images stays under the broker's message limit)."""
        return within_budget(encoded, self.settings.carry_image_max_bytes)

    async def mask_image(self, uri: str, carried: Mapping[str, bytes] | None = None):
        """A mask ("L" image) at uri, with the same header checks as photos."""
        return await self.image_uncached(uri, carried=carried, mode="L")

    # --- images, fetched once per worker while a job moves through its stages ---
    async def image(self, uri: str, max_side: int | None = None,
                    carried: Mapping[str, bytes] | None = None):
        """The decoded image at uri, downscaled to max_side if given. Kept in a small LRU:
        a job's stages usually run on one worker (same partition), so it is read once.
        carried: as for image_uncached."""
        key = (uri, max_side)
        if key in self._images:
            self._images.move_to_end(key)
            return self._images[key]
        if max_side is None:
            image = await self.image_uncached(uri, carried=carried)
        else:
            image = await asyncio.to_thread(fit_within, await self.image(uri, carried=carried),
                                            max_side)
        self._images[key] = image
        while len(self._images) > 16:
            self._images.popitem(last=False)
        return image


@dataclass(frozen=True)
class ChainedStage:
    """A stage as handle() runs it: its name, its handler, the model it takes (None: the raw
    message) and handle()'s options for it (same defaults)."""
    name: str
    handler: Callable[[BaseModel], Awaitable[None]]
    model: type[BaseModel] | None
    fail_jobs: bool = True
    on_failure: Callable | None = None
    follows_cancellations: bool = True
    owns_table: bool = False  # chained only where a send asks (stage_agent)


def within_budget(encoded: Mapping[str, bytes], budget: int) -> dict[str, bytes]:
    """Of these encoded images (in order), those that fit budget bytes together: each one
    that still fits is taken, one too large for what is left is skipped."""
    left, taken = budget, {}
    for uri, data in encoded.items():
        if len(data) <= left:
            taken[uri] = data
            left -= len(data)
    return taken


@dataclass(frozen=True)
class InHand:
    """The message a stage is handling, as the in-flight journal knows it: where it is
    (stage, topic, partition, offset), and how many workers died while they ran it."""
    spot: tuple[str, str, int, int]
    deaths: int = 0


_in_hand: contextvars.ContextVar[InHand | None] = contextvars.ContextVar(
    "restyle_message_in_hand", default=None)


def message_in_hand() -> InHand | None:
    """The message the calling stage is handling (None outside a stage): what a worker that
    exits because of it blames (streams.core.shutdown.exit_at_once)."""
    return _in_hand.get()


class Handoff(NamedTuple):
    """A job handed to a chained stage: the stage, its input, the owner claim on the record
    written for a table owner (None for others), and the trace context of the span that
    handed it over (the headers the record would have carried)."""
    stage: ChainedStage
    decoded: BaseModel
    claim: Claim | None
    sender: list[tuple[str, bytes]]


class Unsettled(NamedTuple):
    """A chained stage's sends, not yet acknowledged, with what failing its job takes."""
    step: ChainedStage
    decoded: BaseModel
    sends: list


# The sends of a chain's stages left to settle once the chain has run (Runtime._handle).
_chain_unsettled: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "restyle_chain_unsettled", default=None)


def _defer_to_chain(step: ChainedStage, decoded, sends: list, following: list) -> bool:
    """Leave a stage's sends to be settled at the chain's end, where it has handed the job to
    a stage in-process (following) that would otherwise wait for them."""
    unsettled = _chain_unsettled.get()
    if not following or not sends or unsettled is None:
        return False
    unsettled.append(Unsettled(step, decoded, sends))
    return True


# The chained stages a stage has handed a job to while it handles one message (in order).
_chain: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "restyle_chained_stages", default=None)


def _refusing(claim):
    """A chained table owner's on_failure: the owner's agent takes the record instead."""
    async def refuse(_decoded, _error) -> None:
        claim.refused()
    return refuse


def _refuse_all(chain: list) -> None:
    """The chained steps of a dropped chain: their records are their owners' agents' to
    handle."""
    for handoff in chain:
        if handoff.claim is not None:
            handoff.claim.refused()


def _settled_send() -> asyncio.Future:
    """What a chained send returns: a send already settled, that placed no record."""
    future = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


# The sends made while a stage handles one message, until the broker acknowledges them.
_unacknowledged: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "restyle_unacknowledged_sends", default=None)


@asynccontextmanager
async def acknowledged_sends(deferred: Callable[[list], bool] = lambda _sends: False):
    """Every Runtime.send made inside is acknowledged by the broker before this block ends
    (StageFailure BROKER_UNAVAILABLE if one is not), unless deferred(sends) takes them to
    settle later: a message is done only once what it caused is on the broker. The producer
    retries a send within RESTYLE_RETRY_BUDGET_S."""
    sends: list = []
    token = _unacknowledged.set(sends)
    try:
        yield
    finally:
        _unacknowledged.reset(token)
    if not deferred(sends):
        await settle(sends)


async def settle(sends: list) -> None:
    for topic, pending in sends:
        try:
            await pending
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise StageFailure(ErrorCode.BROKER_UNAVAILABLE,
                               f"publishing to {topic} failed: {describe(exc)}") from exc


# Marks a record a chained table owner was handed in-process as it was written (send): its
# agent passes it by where that call handled it (owner_claims.py).
HANDLED_IN_PROCESS = ("restyle-handled-in-process", b"1")


def _marked(message) -> bool:
    """Whether message carries the mark (not whether it was handled: Runtime's method)."""
    return HANDLED_IN_PROCESS in as_header_list(message.headers)


def as_header_list(headers) -> list[tuple[str, bytes | None]]:
    """A message's headers as (name, bytes) pairs (faust gives a list or a mapping); a header
    without a value (Kafka allows it) keeps none."""
    if not headers:
        return []
    items = headers.items() if hasattr(headers, "items") else headers
    return [(name, value if isinstance(value, bytes) or value is None else str(value).encode())
            for name, value in items]


def decode(raw: bytes | None, model: type[M]) -> M:
    """Bytes to a validated model, or StageFailure(INVALID_JSON | SCHEMA_VIOLATION)."""
    return validate(json_object(raw), model)


# No contract nests deeper than a few levels; a deeper message is refused before any model
# sees it (and json's own recursion limit turns into INVALID_JSON, not a stage error).
MAX_JSON_DEPTH = 32


def json_object(raw: bytes | None) -> dict:
    """Bytes to a JSON object, or StageFailure(INVALID_JSON)."""
    try:
        data = json.loads(raw) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StageFailure(ErrorCode.INVALID_JSON, f"message is not JSON: {exc}") from None
    except RecursionError:
        data = None
        depth = MAX_JSON_DEPTH + 1
    else:
        depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise StageFailure(ErrorCode.INVALID_JSON,
                           f"message nests deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(data, dict):
        raise StageFailure(ErrorCode.INVALID_JSON, "message must be a JSON object")
    return data


def json_depth(value) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iterative: no recursion)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                pending.extend((child, depth + 1) for child in item)
    return deepest


def validate(data: dict, model: type[M]) -> M:
    """A JSON object to a validated model, or StageFailure(SCHEMA_VIOLATION)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise StageFailure(ErrorCode.SCHEMA_VIOLATION, describe_validation(exc)) from None


def describe_validation(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "message"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)
