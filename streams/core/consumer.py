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
faust's seek, offset 0 fetched again and dropped, the ingest waiting for ever). Here a held-back
message fetched again goes through, what this generation has processed already does not come a
second time, and a message held back for REDELIVER_AFTER_S without coming again (no seek brought
it back) is fetched again from the partition.
"""
from __future__ import annotations

import logging
import time

from aiokafka.errors import IllegalStateError
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger("restyle")

_fetch_max_wait_ms = 1500
# How long a skipped message may wait to be fetched again before its partition is fetched
# again from it: the seek after a rebalance brings it back within a fetch, far sooner.
REDELIVER_AFTER_S = 10.0


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


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self):
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def ack(self, message) -> bool:
        fetched_in = getattr(message, "generation_id", None)
        stale = fetched_in is not None and fetched_in != self.app.consumer_generation_id
        if stale or not self.app.flow_control.is_active():
            message.acked = True  # done with, as far as its stream is concerned
            self._hold_back(message.tp, message.offset)  # but not committed: it comes again
            return False
        self._held_back(message.tp).discard(message.offset)
        self._redelivering(message.tp).discard(message.offset)
        return super().ack(message)

    def _restyle_state(self, name: str) -> dict:
        """Per-partition bookkeeping of restyle's own (faust builds its consumer without us)."""
        if not hasattr(self, "_restyle"):
            self._restyle = {"held_back": {}, "redelivering": {}, "held_since": {},
                             "in_flight_at_refetch": {}}
        return self._restyle[name]

    def _held_back(self, tp) -> set[int]:
        """Offsets of tp skipped without being processed: the commit stays below them."""
        return self._restyle_state("held_back").setdefault(tp, set())

    def _redelivering(self, tp) -> set[int]:
        """Held-back offsets of tp fetched again and on their way through the stream."""
        return self._restyle_state("redelivering").setdefault(tp, set())

    def _hold_back(self, tp, offset: int) -> None:
        committed = self._committed_offset.get(tp)
        if offset in self._acked_index[tp] or (committed is not None and offset < committed):
            return  # its copy from this generation was processed already
        self._held_back(tp).add(offset)
        self._redelivering(tp).discard(offset)  # skipped again: it has to come once more
        self._restyle_state("held_since").setdefault(tp, time.monotonic())

    def _new_offset(self, tp):
        """faust's next commit for tp, counting only the acknowledgements below the lowest
        offset held back (faust would commit a run above it)."""
        held = self._held_back(tp)
        if not held:
            return super()._new_offset(tp)
        floor = min(held)
        for offset in held:  # never a gap in the log faust may skip over
            self._gap[tp].chop(offset, offset + 1)
        acked = self._acked[tp]
        above = [offset for offset in acked if offset >= floor]
        acked[:] = [offset for offset in acked if offset < floor]
        try:
            return super()._new_offset(tp) if acked else None
        finally:
            acked.extend(above)
            acked.sort()

    async def getmany(self, timeout: float):
        """faust's fetch, less what this generation has processed already, with a held-back
        message let past the read offset faust's fetch loop would drop it below."""
        async for tp, message in super().getmany(timeout):
            offset = message.offset
            if offset in self._held_back(tp):
                read = self._read_offset[tp]
                if read is not None and offset < read:
                    self._read_offset[tp] = offset
                self._redelivering(tp).add(offset)
            elif offset in self._acked_index[tp] or \
                    offset in self._restyle_state("in_flight_at_refetch").get(tp, ()):
                continue  # processed (or being processed) in this generation
            yield tp, message

    async def commit(self, *args, **kwargs) -> bool:
        await self._refetch_held_back()
        return await super().commit(*args, **kwargs)

    async def _refetch_held_back(self) -> None:
        """Fetch a partition again from a held-back message that has not come again within
        REDELIVER_AFTER_S while faust's fetch loop read past it (the skip came after the seek
        that would have brought it back)."""
        if self.should_stop or self.app.rebalancing or not self.app.flow_control.is_active():
            return  # the seek that ends the rebalance brings it back
        now, since = time.monotonic(), self._restyle_state("held_since")
        for tp, held in self._restyle_state("held_back").items():
            waiting = held - self._redelivering(tp)
            if not waiting:
                since.pop(tp, None)
                continue
            floor, read = min(waiting), self._read_offset[tp]
            if now - since.setdefault(tp, now) < REDELIVER_AFTER_S or read is None or \
                    read <= floor:
                continue  # not read past yet: the fetch brings it (a busy stream reads late)
            since[tp] = now  # the next try, if this one does not bring it, after as long
            # What is in flight now must not start a second time when it is fetched again.
            self._restyle_state("in_flight_at_refetch")[tp] = {
                message.offset for message in list(self._unacked_messages)
                if message.tp == tp and message.offset > floor}
            log.warning("%s offset %d was skipped and has not come again in %.0f s: fetching "
                        "the partition again from it", tp, floor, REDELIVER_AFTER_S)
            try:
                await self.seek(tp, floor)  # faust's seek: the fetch position and read offset
            except IllegalStateError:
                pass  # revoked meanwhile: its next owner starts from the commit

    async def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:  # the next owner starts from the commit
            for state in self._restyle_state("held_back"), self._restyle_state("redelivering"), \
                    self._restyle_state("held_since"), \
                    self._restyle_state("in_flight_at_refetch"):
                state.pop(tp, None)
        await super().on_partitions_revoked(revoked)


def use_fetch_max_wait(milliseconds: int) -> None:
    """Install the consumer for every faust app in this process (one worker = one process)."""
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = milliseconds
    faust_aiokafka.Transport.Consumer = _Consumer
