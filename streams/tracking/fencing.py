"""Results published in transactions, one transactional id per job-events partition, so that a
tracker that lost its partition without knowing it cannot publish a result after the
partition's next owner has looked for it (RESTYLE_RESULT_TRANSACTIONS; brokers with
transactions only: Apache Kafka, not Tansu).

The replay check (published.py) covers a tracker that stopped. One that did not stop but lost
its partition all the same (a pause longer than the session timeout: a stalled host, a network
split, a long garbage collection: a "zombie") may be in the middle of an event when it wakes.
It would publish the job's result after the next owner read the results partition and found
none there, and the job would have two results.

Kafka's answer is fencing (KIP-98): each result is sent in a transaction whose transactional id
names the partition, "<app id>.results.<partition>". A tracker that takes the partition
registers that id (InitProducerId) before it reads the results partition. The broker then
settles the previous owner's transaction (a commit it asked for is completed, one still open is
aborted) and refuses anything more from it (ProducerFenced). So the read sees every result the
previous owner will ever publish, and nothing that owner sends later counts. Consumers of
restyle.results read with isolation.level=read_committed (librdkafka's default; the Java
client's and aiokafka's is read_uncommitted), and an aborted result is never theirs.

A fenced tracker publishes nothing and stores nothing for the event, and leaves it
uncommitted: it comes again, to the partition's owner. Only an assignment registers an id. A
tracker does not register one again on its own (after an error, say): if it were the zombie,
that would fence the partition's real owner. The one exception is a tracker fenced on a
partition it provably still owns (_still_owned): a stopped tracker's registration can go out
after it wakes, and the owner takes the id back. So a
transaction a failed publish left open is aborted with the same producer (refused, as any of
its requests, once another tracker has the id), and one whose commit or abort got no answer is
waited for, before the next result is published or the partition is read; a registration that
fails (the broker restarting) is retried until it succeeds or the partition is revoked.

Only the result is in the transaction. The job's end in the jobs table and the event's offset
stay with faust (its own transactions are not correct for restyle's topology: README,
Brokers); a replay of the event is what the replay check is for.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, ProducerFenced
from aiokafka.producer.transaction_manager import TransactionState
from tenacity import AsyncRetrying, retry_if_exception, wait_random_exponential

from schemas import ErrorCode, StageFailure
from streams.adapters.retries import describe

log = logging.getLogger("restyle")

# How long a publish (or a read of the results) waits for the partition's transactional id to
# be registered, and for a transaction left unsettled to end, before it fails.
REGISTER_TIMEOUT_S = 30.0
# How long a publish waits to abort the transaction a failed send left open.
ABORT_TIMEOUT_S = 10.0


class Fenced(Exception):
    """Another tracker has taken the partition (it registered the partition's transactional id
    after this one), or the partition is not this tracker's: it publishes nothing for it now.
    The event is not done: it comes again, to the partition's owner."""


class TransactionalResults:
    def __init__(self, connection: dict, results_topic: str, app_id: str,
                 generation: Callable[[], int | None] = lambda: None,
                 in_group: Callable[[], bool] = lambda: True, reclaim_after_s: float = 20.0,
                 register_timeout_s: float = REGISTER_TIMEOUT_S, clock=time.monotonic):
        """connection: aiokafka client options (streams.core.kafka.client_options); app_id:
        names the deployment's transactional ids (two deployments on one broker never share
        them); generation(): the consumer group generation the tracker is in; in_group():
        False while the tracker knows it is out of its group (stopped past its session
        timeout: streams/core/pauses.py); reclaim_after_s: how long a tracker fenced on a
        partition it still owns waits before it takes the partition's id back (twice the
        session timeout: see _producer)."""
        self.connection, self.topic, self.app_id = connection, results_topic, app_id
        self.generation, self.in_group, self.clock = generation, in_group, clock
        self.reclaim_after_s, self.register_timeout_s = reclaim_after_s, register_timeout_s
        # partition -> the registration of its transactional id (resolves to its producer);
        # only the partitions assigned to this tracker and not fenced since.
        self._producers: dict[int, asyncio.Task] = {}
        # partition -> (the generation it was fenced in, when): assigned, and fenced since.
        self._fenced_in: dict[int, tuple[int | None, float]] = {}

    def transactional_id(self, partition: int) -> str:
        return f"{self.app_id}.results.{partition}"

    def take(self, partitions: Iterable[int]) -> None:
        """These job-events partitions were assigned to this tracker: each one's transactional
        id is registered (fencing its previous owner), in the background; ready() waits for
        it."""
        for partition in partitions:
            self._fenced_in.pop(partition, None)
            self._register(partition)

    def drop(self, partitions: Iterable[int]) -> None:
        """These partitions were revoked (or fenced): their producers are closed."""
        for partition in partitions:
            self._fenced_in.pop(partition, None)
            self._forget(partition)

    async def ready(self, partition: int) -> None:
        """Once the partition's transactional id is registered and no transaction of this
        tracker's is unsettled on it: from then on the previous owner's results are settled
        (committed or aborted) and it can publish no more, and so are this tracker's own."""
        producer = await self._producer(partition)
        await self._settled(partition, producer, self.register_timeout_s)

    async def publish(self, partition: int, key: bytes, value: bytes,
                      headers: list[tuple[str, bytes]]) -> None:
        """The result, committed in a transaction of the partition's id. Fenced: another
        tracker owns the partition. StageFailure(BROKER_UNAVAILABLE): not known to be published
        (the transaction was aborted, or its end is still unknown: ready() waits for it)."""
        producer = await self._producer(partition)
        await self._settled(partition, producer, self.register_timeout_s)
        try:
            await producer.begin_transaction()
            # To the results partition of the job-events partition's number, where the next
            # owner's read looks (the same one the key would pick: equal partition counts).
            await (await producer.send(self.topic, value, key=key, headers=headers,
                                       partition=partition))
            await producer.commit_transaction()
        except ProducerFenced as fenced:
            self._fenced(partition, fenced)
        except asyncio.CancelledError:
            raise  # (an open transaction is aborted before the partition's next publish)
        except Exception as exc:  # noqa: BLE001 - settled below, then said
            try:
                await self._settled(partition, producer, ABORT_TIMEOUT_S)
            except StageFailure:
                pass  # its end is waited for before the next publish or read
            raise StageFailure(ErrorCode.BROKER_UNAVAILABLE,
                               f"publishing to {self.topic} failed: {describe(exc)}") from exc

    async def close(self) -> None:
        registrations = list(self._producers.values())
        self._producers.clear()
        for registration in registrations:
            await _stop(registration)

    # --- the producers ---
    def _forget(self, partition: int) -> None:
        registration = self._producers.pop(partition, None)
        if registration is not None:
            _retire(registration)

    def _register(self, partition: int) -> None:
        self._forget(partition)
        registration = asyncio.ensure_future(self._registered(partition))
        registration.add_done_callback(_retrieved)
        self._producers[partition] = registration

    def _fenced(self, partition: int, cause: BaseException):
        self._forget(partition)
        generation, recorded = self.generation(), self._fenced_in.get(partition)
        if recorded is None or recorded[0] != generation:
            self._fenced_in[partition] = (generation, self.clock())
        raise Fenced(self.transactional_id(partition)) from cause

    async def _registered(self, partition: int) -> AIOKafkaProducer:
        """A producer of the partition's transactional id, registered (InitProducerId, done by
        start()): tried again, with backoff, while the broker cannot be reached or answers
        that it cannot yet; not when it refuses (no transactions, no permission)."""
        retrying = AsyncRetrying(wait=wait_random_exponential(multiplier=0.5, max=10),
                                 retry=retry_if_exception(_transient))
        async for attempt in retrying:
            with attempt:
                while not self.in_group():  # a stopped tracker's: it would fence the owner
                    await asyncio.sleep(0.25)  # (the rejoin's assignment replaces it)
                producer = AIOKafkaProducer(**self.connection,
                                            transactional_id=self.transactional_id(partition))
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
        return producer

    async def _producer(self, partition: int) -> AIOKafkaProducer:
        registration = self._producers.get(partition)
        if registration is None and self._still_owned(partition):
            self._register(partition)
            registration = self._producers[partition]
        if registration is None:
            raise Fenced(f"{self.transactional_id(partition)}: partition {partition} is not "
                         f"this tracker's now")
        try:
            return await asyncio.wait_for(asyncio.shield(registration),
                                          self.register_timeout_s)
        except asyncio.CancelledError:
            if registration.cancelled() and not asyncio.current_task().cancelling():
                raise Fenced(f"partition {partition} was revoked") from None
            raise
        except ProducerFenced as fenced:
            self._fenced(partition, fenced)
        except Exception as exc:  # noqa: BLE001 - said in the failure
            raise StageFailure(ErrorCode.BROKER_UNAVAILABLE, (
                f"could not register the transactional id {self.transactional_id(partition)} "
                f"to publish results within {self.register_timeout_s:g} s: {describe(exc)} "
                f"(RESTYLE_RESULT_TRANSACTIONS needs a broker with transactions; Tansu has "
                f"none)")) from exc

    def _still_owned(self, partition: int) -> bool:
        """Fenced on a partition it still owns: another tracker registered the partition's id
        without owning it (one stopped while its registration was under way, which went out
        once it woke). A tracker that is out of its group learns so at its next heartbeat and
        rejoins, in a new generation; one still in the generation it was fenced in after
        reclaim_after_s (twice the session timeout), heartbeating all along, is the owner, and
        takes the id back."""
        generation, since = self._fenced_in.get(partition, (None, None))
        if since is None or generation != self.generation() or not self.in_group() or \
                self.clock() - since < self.reclaim_after_s:
            return False
        log.warning("%s was registered by another tracker while this one stayed the "
                    "partition's owner (generation %s, for %.0f s since): taken back",
                    self.transactional_id(partition), generation, self.clock() - since)
        del self._fenced_in[partition]
        return True

    async def _settled(self, partition: int, producer: AIOKafkaProducer,
                       timeout_s: float) -> None:
        """No transaction of the producer's is left unsettled: one open (a publish failed
        before its commit) or in error is aborted; one being committed or aborted is waited
        for. Fenced: the broker refused it (another tracker has the id)."""
        # aiokafka (0.14) has no public word for the transaction's state.
        manager = producer._txn_manager
        try:
            if manager.state in (TransactionState.IN_TRANSACTION,
                                 TransactionState.ABORTABLE_ERROR):
                await asyncio.wait_for(producer.abort_transaction(), timeout_s)
            elif manager.state in (TransactionState.COMMITTING_TRANSACTION,
                                   TransactionState.ABORTING_TRANSACTION):
                await asyncio.wait_for(asyncio.shield(manager.wait_for_transaction_end()),
                                       timeout_s)
        except ProducerFenced as fenced:
            self._fenced(partition, fenced)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - said in the failure
            raise StageFailure(ErrorCode.BROKER_UNAVAILABLE, (
                f"the last transaction publishing to {self.topic} has not ended: "
                f"{describe(exc)}")) from exc
        if manager.state is TransactionState.FATAL_ERROR:  # its sender stopped, for this:
            cause = producer._sender.sender_task.exception()
            if isinstance(cause, ProducerFenced):  # (or a transaction the broker timed out)
                self._fenced(partition, cause)
            raise StageFailure(ErrorCode.BROKER_UNAVAILABLE, (
                f"the producer of {self.transactional_id(partition)} stopped: "
                f"{describe(cause)}")) from cause


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (KafkaConnectionError, KafkaTimeoutError, OSError)) or \
        getattr(exc, "retriable", False)


def _retrieved(task: asyncio.Task) -> None:
    """A registration's failure is reported where it is awaited, not as never retrieved."""
    if not task.cancelled():
        task.exception()


def _retire(registration: asyncio.Task) -> None:
    stopping = asyncio.ensure_future(_stop(registration))
    stopping.add_done_callback(_retrieved)


async def _stop(registration: asyncio.Task) -> None:
    """Close a registration's producer (cancelling a registration still under way)."""
    if not registration.done():
        registration.cancel()
    await asyncio.wait([registration])  # (its own failure is not raised here)
    if registration.cancelled() or registration.exception() is not None:
        return  # nothing to close
    producer = registration.result()
    try:
        await producer.stop()
    except Exception:  # noqa: BLE001 - closing a producer the broker fenced may fail too
        log.debug("closing a results producer failed", exc_info=True)
