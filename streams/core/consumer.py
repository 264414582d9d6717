"""restyle's faust consumer: a configurable fetch long-poll, and no commit past a message
that was never processed.

faust 0.15 hard-codes aiokafka's `fetch_max_wait_ms` to 1500 ms. A broker that does not answer a
long-poll fetch as soon as data arrives (the embedded Tansu broker) then adds up to that much
latency to every hop between stages. restyle sets it from `RESTYLE_FETCH_MAX_WAIT_MS`.

After a rebalance, faust's stream skips the messages it fetched in the previous generation
(they are fetched again) but still acknowledges them, and the rebalance has just forgotten the
partition's committed offset, so nothing stops that acknowledgement from counting: a skipped
message at offset 7, with 3..6 not yet fetched again, commits 8. If the next rebalance of a
storm moves the partition, its new owner starts at 8 and 3..7 are never processed. The
fault bench lost a catalog product this way (Apache Kafka, a worker that rejoined three times
in 13 s). Here an acknowledgement from an earlier generation counts for nothing: the message
comes again in the current generation, and only that copy moves the commit.

faust's stream also skips (and acknowledges) what it takes while flow control is suspended (a
rebalance, the table recovery after it), and faust commits the first run of consecutive
acknowledged offsets even when an offset below that run was never processed. An end-to-end run
lost a catalog product that way: offset 0 skipped, offset 1 processed, 2 committed. So an
acknowledgement that does not count holds the partition's commit back below that offset until
the message, delivered again (faust seeks back to the committed offset once it resumes), is
processed. A partition revoked forgets what it held back: its next owner starts from the commit.

That delivery again rests on the seek faust makes after every rebalance, and aiokafka's
`seek_to_committed` does not seek a partition whose committed offset is none or 0: a partition
that stays with its worker before its first commit keeps fetching from where the previous
generation's fetch got to, past the messages skipped in between. Their commit is held back, so
nothing is lost, but they wait until the partition moves (the scale-out test saw a partition's
jobs done five minutes late, when the worker that held them left). Here such a partition goes
back to its beginning, where a new owner would start (`auto_offset_reset=earliest`).

A held-back message fetched again must also reach its stream, and faust's fetch loop drops any
message below the last offset it read on the partition: a message from the fetch before the
seek, processed after it, raised that offset above the rewound one (the full suite's Kafka stack
lost a catalog product so: offset 0 skipped during the recovery, offset 1 processed just after
faust's seek, offset 0 fetched again and dropped, the ingest waiting for ever). So restyle
decides what its streams get from each fetch: a message not handed to them since the last
rebalance's seek goes through (its read offset lowered where faust would drop it), one handed
already does not come twice (processed or still in flight) unless its stream skipped it. A
held-back message the fetch has passed without it coming again (the skip came after the seek
that would have brought it back) is fetched again from its partition after REDELIVER_AFTER_S.
If the broker's retention has deleted it meanwhile, it will never come: the commit moves past
it, and the log says so.

faust's fetch loop also gives up delivering a message when the flow is suspended first, and
reads on past it; the commit then moved past it once the next ones were processed (faust
compares what was acknowledged with the committed offset one off, so the message at the
committed offset itself can be passed over), or, with none after it, stayed below it for good:
the fault bench's paused CPU worker lost uploads both ways. A message delivered while faust
rebuilds its topic index after a rebalance reaches no stream at all, with the same outcome.
Such messages are held back (_delivering). And faust counts offsets its fetch loop jumps over
as acknowledged (a compacted log, transaction markers); its seek back to the committed offset
can make a jump out of messages handed on their way: those are held back too, not counted
(_add_gap).

All of this rests on every acknowledgement, and every skip, reaching _Consumer.ack: faust's
compiled stream iterator bypasses it, so restyle's workers stream with faust's pure-Python
iterator (install_consumer).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiokafka.errors import IllegalStateError, KafkaError
from faust import streams as faust_streams
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.core.flow_control import install_flow_control
from streams.core.heartbeats import heartbeat_through_assignment

log = logging.getLogger("restyle")

_fetch_max_wait_ms = 1500
# How long a skipped message may wait to be fetched again before its partition is fetched
# again from it: the seek after a rebalance brings it back within a fetch, far sooner.
REDELIVER_AFTER_S = 10.0
# How long to wait for the broker's answer to where a partition's log starts before seeking.
LOG_START_WAIT_S = 10.0


async def seek_to_committed(consumer, changelog_topics: frozenset[str] = frozenset()) -> dict:
    """Seek every assigned partition of an aiokafka consumer to its committed offset, those
    with none (or 0) included, which aiokafka leaves where they are: to offset 0 (a log whose
    start has been deleted resets to its earliest offset, as auto_offset_reset=earliest says).
    Partitions of changelog_topics are left as aiokafka leaves them: the table recovery reads
    those and positions them itself (a standby would otherwise read its changelog again from
    the start at every seek). Returns the committed offsets, as aiokafka's does."""
    committed = await consumer.seek_to_committed()
    for tp, offset in committed.items():
        if offset or tp.topic in changelog_topics:
            continue
        try:
            # consumer.seek: no request and no check of the group's state. seek_to_beginning
            # re-raises whatever ended the group coordinator's task (a worker past its poll
            # interval): in this seek, which faust makes from its fetcher, that stopped the
            # worker.
            consumer.seek(tp, 0)
        except IllegalStateError:
            pass  # revoked meanwhile: its next owner starts from the commit
    return committed


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = _fetch_max_wait_ms  # read by aiokafka's fetcher at start
        return consumer

    async def seek_to_committed(self):
        changelogs = frozenset(self.app.tables.changelog_topics)
        return await self.call_thread(seek_to_committed, self._ensure_consumer(), changelogs)


@dataclass
class _Partition:
    """restyle's own bookkeeping of one assigned partition."""
    held_back: set[int] = field(default_factory=set)  # skipped unprocessed: the commit stays below
    redelivering: set[int] = field(default_factory=set)  # held back, fetched again, on their way
    handed: set[int] = field(default_factory=set)  # handed to the streams in this generation
    fetched_to: int | None = None  # the highest offset fetched since the last seek
    eligible_since: float | None = None  # when the fetch was first seen past a held-back one
    refetch_from: int | None = None  # a fetch from here is due, made between two fetches
    astray_since: tuple[int, float] | None = None  # (the committed offset, since when) astray


class _Consumer(faust_aiokafka.Consumer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.callback = self._delivering(self.callback)

    def _delivering(self, deliver):
        """faust's delivery of a fetched message to its stream, which its fetch loop gives up
        on when the flow is suspended first (a rebalance), or which reaches no stream (the
        topic index being rebuilt), its fetch loop reading on past the message as if
        delivered: then it is held back, and comes again."""
        acks_enabled_for = self.app.topics.acks_enabled_for

        async def callback(message):
            acking = acks_enabled_for(message.topic)
            try:
                delivered = await deliver(message)
            except asyncio.CancelledError:
                if acking:
                    self._hold_back(message.tp, message.offset)
                raise
            if acking and message.refcount <= 0 and not message.acked:
                # No stream took it: faust delivers to the topic's channels as its index has
                # them, and the index is rebuilt after a rebalance ("Updating subscribed
                # topics"); a message delivered in between goes nowhere.
                self._hold_back(message.tp, message.offset)
            return delivered
        return callback

    def _new_consumer_thread(self):
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def ack(self, message) -> bool:
        fetched_in = getattr(message, "generation_id", None)
        stale = fetched_in is not None and fetched_in != self.app.consumer_generation_id
        if stale or not self.app.flow_control.is_active():
            message.acked = True  # done with, as far as its stream is concerned
            self._hold_back(message.tp, message.offset)  # but not committed: it comes again
            return False
        book = self._book(message.tp)
        book.held_back.discard(message.offset)
        book.redelivering.discard(message.offset)
        return super().ack(message)

    def hold_back(self, message) -> None:
        """A message its stream leaves unhandled (the worker is out of its group: pauses.py):
        done with as far as the stream is concerned, never committed, and fetched again."""
        message.acked = True
        self._hold_back(message.tp, message.offset)

    def _books(self) -> dict:
        """Each assigned partition's _Partition (faust builds its consumer without us)."""
        if not hasattr(self, "_restyle_books"):
            self._restyle_books = {}
        return self._restyle_books

    def _book(self, tp) -> _Partition:
        return self._books().setdefault(tp, _Partition())

    def _hold_back(self, tp, offset: int) -> None:
        committed = self._committed_offset.get(tp)
        if offset in self._acked_index[tp] or (committed is not None and offset < committed):
            return  # its copy from this generation was processed already
        book = self._book(tp)
        book.held_back.add(offset)
        book.redelivering.discard(offset)  # skipped again: it must come again

    def _new_offset(self, tp):
        """faust's next commit for tp, counting only the acknowledgements below the lowest
        offset held back (faust would commit a run above it)."""
        held = self._book(tp).held_back
        committed = self._committed_offset.get(tp)
        if committed is not None:  # committed already (an earlier owner processed it)
            held.difference_update([offset for offset in held if offset < committed])
            if self._acked[tp] and committed not in self._acked_index[tp] and \
                    not self._gap[tp].overlaps(committed):
                # The committed offset is the next one to process: nothing moves until it is
                # done (faust's own check lets the run start one above it).
                return None
        if not held:
            return super()._new_offset(tp)
        floor = min(held)
        for offset in held:  # never in a gap of the log faust counts as acknowledged
            self._gap[tp].chop(offset, offset + 1)
        acked = self._acked[tp]
        above = [offset for offset in acked if offset >= floor]
        acked[:] = [offset for offset in acked if offset < floor]
        try:
            return super()._new_offset(tp) if acked else None
        finally:
            acked.extend(above)
            acked.sort()

    async def _add_gap(self, tp, offset_from: int, offset_to: int) -> None:
        """faust counts offsets its fetch loop jumped over (from offset_from up to the message
        at offset_to) as acknowledged: a compacted log or transaction markers leave such gaps.
        A jump can also come from faust's own seek back to the committed offset, whose rewound
        read offset lands after messages handed on its way (its fetch loop drops a message
        taken while the flow is suspended): the next message then looks like a jump over them
        (the fault bench lost uploads so, a CPU worker paused past its session timeout). A
        message handed to the streams in this generation and not acknowledged was read, not
        jumped over: it is held back (the commit stays below it and it is fetched again), and
        only the rest of the range counts."""
        book = self._book(tp)
        read_unprocessed = [offset for offset in range(offset_from, offset_to)
                            if offset in book.handed and offset not in self._acked_index[tp]]
        for offset in read_unprocessed:
            self._hold_back(tp, offset)
        run_from = offset_from
        for offset in [*read_unprocessed, offset_to + 1]:
            if offset > run_from:
                await super()._add_gap(tp, run_from, offset - 1)
            run_from = offset + 1

    async def perform_seek(self) -> None:
        """faust's seek to the committed offsets (after a rebalance): the fetch starts again
        there. What was handed stays known (a batch fetched before the seek may still be
        handing its messages out); the assignment before it started this generation afresh.
        Where the fetch has got to is forgotten before the seek, not after: the seek itself is
        made in the consumer's thread well before this call returns, and a fetch from the
        seek's offsets can be handed out meanwhile (a held-back message it passed must count
        as passed, or it would wait for a fetch that never comes)."""
        for book in self._books().values():
            book.fetched_to = book.refetch_from = None
        await super().perform_seek()

    async def on_partitions_assigned(self, assigned, *args, **kwargs) -> None:
        """A new generation starts from the committed offsets, everything after them fetched
        again: nothing of restyle's bookkeeping from before counts (a message finishing
        while the revocation waited for it was held back for nothing)."""
        self._books().clear()
        await super().on_partitions_assigned(assigned, *args, **kwargs)

    async def getmany(self, timeout: float):
        """faust's fetch, less what the streams were handed since the last rebalance and did
        not skip, each message handed lowering the read offset faust's fetch loop would drop
        it below (and each one left out raising it, so faust sees no gap in the log)."""
        await self._fetch_again_where_due()
        acks_enabled_for = self.app.topics.acks_enabled_for
        async for tp, message in super().getmany(timeout):
            if not acks_enabled_for(message.topic):
                # A table's changelog: its recovery seeks and reads it again itself.
                yield tp, message
                continue
            offset, read, book = message.offset, self._read_offset[tp], self._book(tp)
            book.fetched_to = offset if book.fetched_to is None else max(book.fetched_to, offset)
            if offset in book.held_back and offset not in book.redelivering:
                book.redelivering.add(offset)  # skipped before: once more (not twice at once)
            elif offset in book.handed:
                if read is None or read < offset:
                    self._read_offset[tp] = offset
                continue  # processed, or on its way: not twice
            if read is not None and offset < read:
                self._read_offset[tp] = offset
            book.handed.add(offset)
            yield tp, message

    async def commit(self, *args, **kwargs) -> bool:
        self._plan_fetches_again()
        committed = await super().commit(*args, **kwargs)
        for tp, book in self._books().items():  # below the commit: never again
            floor = self._committed_offset.get(tp)
            if floor is not None:
                book.handed.difference_update([o for o in book.handed if o < floor])
        return committed

    def _plan_fetches_again(self) -> None:
        """A held-back offset the fetch has passed without it coming again, for
        REDELIVER_AFTER_S: fetch its partition again from it (made by getmany, between two
        fetches, so no message of an earlier fetch follows the seek)."""
        if self.should_stop or self.app.rebalancing or not self.app.flow_control.is_active():
            return  # the seek that ends the rebalance brings it back
        now = time.monotonic()
        self._find_astray(now)
        for book in self._books().values():
            waiting = book.held_back - book.redelivering
            if not waiting or book.fetched_to is None or book.fetched_to < min(waiting):
                book.eligible_since = None  # nothing skipped, or the fetch has yet to reach it
                continue
            if book.eligible_since is None:
                book.eligible_since = now
            if now - book.eligible_since >= REDELIVER_AFTER_S:
                book.eligible_since = None
                book.refetch_from = min(waiting)

    def _find_astray(self, now: float) -> None:
        """The message at a partition's committed offset, neither acknowledged, nor held back,
        nor in a stream's hands, while a later one has been acknowledged or its stream has
        nothing in hand (it would have taken it): the commit waits on it. Handed to the
        streams, it went astray on its way by some path not caught above: after
        REDELIVER_AFTER_S it is held back, and so fetched again. Passed by the fetch
        without ever coming, there is no record at that offset (a hole in the log, which
        faust's gap bookkeeping never covers at the committed offset itself): it counts as a
        gap."""
        unacked = list(self._unacked_messages)
        in_hand = {(message.tp, message.offset) for message in unacked}
        busy_topics = {message.topic for message in unacked}
        for tp, book in self._books().items():
            committed = self._committed_offset.get(tp)
            acked = self._acked[tp]
            if committed is None or committed in book.held_back or \
                    (tp, committed) in in_hand or self._gap[tp].overlaps(committed):
                waiting = False
            elif acked:  # later ones done: it is not queued behind them
                waiting = min(acked) > committed and \
                    (committed in book.handed or (book.fetched_to or -1) > committed)
            else:  # the last one fetched: astray if its stream is idle (it would take it)
                waiting = committed in book.handed and tp.topic not in busy_topics
            if not waiting:
                book.astray_since = None
            elif book.astray_since is None or book.astray_since[0] != committed:
                book.astray_since = (committed, now)
            elif now - book.astray_since[1] >= REDELIVER_AFTER_S:
                book.astray_since = None
                if committed in book.handed:
                    log.warning("%s offset %d was handed to its stream and never processed, "
                                "while later ones were: fetched again", tp, committed)
                    self._hold_back(tp, committed)
                    if committed in book.held_back:  # the fetch has been past it: from it now
                        book.refetch_from = committed
                else:  # the fetch went past it without it: no record there (a log's hole)
                    self._gap[tp].addi(committed, committed + 1)

    async def _fetch_again_where_due(self) -> None:
        due = [(tp, book) for tp, book in self._books().items() if book.refetch_from is not None]
        for tp, book in due:
            if self.should_stop or self.app.rebalancing:
                return
            offset, book.refetch_from = book.refetch_from, None
            generation = self.app.consumer_generation_id
            log.warning("%s offset %d was skipped and has not come again in %.0f s: fetching "
                        "the partition again from it", tp, offset, REDELIVER_AFTER_S)
            consumer = self._thread._ensure_consumer()
            sought = await self._thread.call_thread(seek_in_consumer_thread, consumer, tp,
                                                    offset, generation)
            if sought is None or self.app.consumer_generation_id != generation:
                continue
            if sought > offset:
                await self._deleted_before_processed(tp, book, offset, sought)
            self._read_offset[tp] = sought if sought else None
            book.fetched_to = sought - 1

    async def _deleted_before_processed(self, tp, book: _Partition, held: int,
                                        log_start: int) -> None:
        """The broker's retention deleted held-back messages before they came again: they
        never will, and holding the commit below them would hold it for ever. The range
        counts as done (a job that lost its message ends by the sweeper's timeout)."""
        gone = sorted(offset for offset in book.held_back if offset < log_start)
        book.held_back.difference_update(gone)
        book.redelivering.difference_update(gone)
        log.error("%s offsets %s were deleted by the broker's retention before they were "
                  "processed (the log now starts at %d): the commit moves past them",
                  tp, ", ".join(map(str, gone)), log_start)
        # faust counts a gap of the log as acknowledged: the deleted range, less what was
        # acknowledged in it already (an offset counted twice splits faust's run of offsets,
        # and the commit would move past the range in two steps rather than one).
        run_from = min(gone, default=held)
        acked = sorted(o for o in self._acked_index[tp] if run_from <= o < log_start)
        for offset in [*acked, log_start]:
            if offset > run_from:
                await super()._add_gap(tp, run_from, offset - 1)
            run_from = offset + 1

    async def mark_polled(self) -> None:
        """Count as a fetch for aiokafka's idle check (streams/core/rebalance_watch.py)."""
        consumer = self._thread._ensure_consumer()
        await self._thread.call_thread(mark_fetch_activity, consumer)

    async def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:  # the next owner starts from the commit
            self._books().pop(tp, None)
        await super().on_partitions_revoked(revoked)


async def mark_fetch_activity(consumer) -> None:
    """What aiokafka's getmany does for its idle check (max_poll_interval_ms), in faust's
    consumer thread: a fetch that begins and ends now."""
    with consumer._subscription.fetch_context():
        pass


async def seek_in_consumer_thread(consumer, tp, offset: int, generation: int) -> int | None:
    """aiokafka's seek, run in the thread and loop of faust's consumer (its fetcher's records
    and futures belong there), unless the group has moved on from generation (its own seek to
    the committed offsets stands): to offset, or to where the partition's log now starts if
    retention deleted offset. Returns the offset sought; None: not made."""
    def moved_on() -> bool:
        coordinator = getattr(consumer, "_coordinator", None)
        return getattr(coordinator, "generation", generation) != generation

    if moved_on():
        return None
    try:
        starts = await asyncio.wait_for(consumer.beginning_offsets([tp]), LOG_START_WAIT_S)
        target = max(offset, starts[tp])
    except (KafkaError, asyncio.TimeoutError, KeyError):
        target = offset  # unknown: aiokafka resets a deleted offset to the log's start itself
    if moved_on():
        return None
    try:
        consumer.seek(tp, target)
        return target
    except IllegalStateError:  # revoked meanwhile
        return None


def install_consumer(fetch_max_wait_ms: int) -> None:
    """Install restyle's consumer for every faust app in this process (one worker = one
    process), the stream iterator that acknowledges through it, the flow control that keeps
    what it delivered (flow_control.py), and heartbeats that go on while faust takes up a new
    assignment (heartbeats.py)."""
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = fetch_max_wait_ms
    faust_aiokafka.Transport.Consumer = _Consumer
    # faust's compiled stream iterator (faust/_cython/streams.pyx) copies Consumer.ack into
    # itself, so no acknowledgement of a stream's message reaches _Consumer.ack; and a message
    # it skips (taken while the flow is suspended, or fetched in an earlier generation) it
    # drops without acknowledging at all, where the pure-Python iterator acknowledges it. The
    # skipped message was then neither processed nor held back: the fetch again filtered it
    # as handed, and the commit could move past it (a traced run of the pause e2e case lost
    # a message so). The pure-Python iterator costs no more: about 8 us a message either way.
    faust_streams._CStreamIterator = None
    install_flow_control()
    heartbeat_through_assignment()


def group_generation(app) -> int | None:
    """The consumer group generation app's group coordinator holds for it now (aiokafka's:
    -1 once the broker has refused the member, until it rejoins); None before its consumer has
    started. Read from another thread: it is one attribute."""
    kafka_consumer = getattr(getattr(getattr(app, "_consumer", None), "_thread", None),
                             "_consumer", None)
    return getattr(getattr(kafka_consumer, "_coordinator", None), "generation", None)
