"""Where the tracker, the sweeper and the status API read a job's state: the jobs table, plus
render progress newer than the table.

A render reports its steps as they go (up to every step: RESTYLE_PROGRESS_INTERVAL_S paces
them). Storing each tick would write a changelog record per tick (30 a job at 30 steps told),
each one a produce and a broker append on the cores the stages use, for a value only the
status API shows. So a tick that changes nothing but progress is
stored at most every `progress_store_interval_s`; meanwhile the newest is held here, in the
process that owns the job's partition (where status requests are routed). A held tick lost in
a crash or a rebalance is back with the next tick, replayed or new.

Every change (stored or held) wakes whoever waits on the job (changed(): the SSE streams), so
an open stream costs nothing while its job is still.

A stored state is decoded once: the decoded state is kept beside the bytes it came from and
served again while the table holds those bytes (a poll of `GET /jobs/{id}` decodes nothing).
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from schemas import JobEvent, JobEventKind, JobState
from streams.tracking.jobstate import Transition, apply_event
from streams.tracking.watchers import Watchers

_UNREAD = object()
# Decoded states kept, of the jobs read or written most recently (more than are polled at once).
DECODED_STATES_KEPT = 2048


@dataclass
class Step:
    event: JobEvent
    transition: Transition
    current: JobState | None  # the state the event was applied to
    stored: JobState | None  # the jobs table's state (older than current while one is held)


@dataclass
class _Held:
    state: JobState
    derived_from: float  # updated_at of the stored state it was derived from


class JobBoard:
    def __init__(self, table, progress_store_interval_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.table = table
        self.progress_store_interval_s = progress_store_interval_s
        # This process's own clock times the stores: events carry their senders' clocks, and
        # a GPU host's running behind would otherwise hold ticks back for that much longer.
        self.clock = clock
        self._held: dict[str, _Held] = {}
        self._last_store: dict[str, float] = {}  # job_id -> clock() of its last store here
        self._watchers = Watchers()  # the SSE streams of jobs that change here
        # job_id -> (the stored bytes, their state): changelog recovery writes the table too,
        # so the bytes, not this process's writes, say whether a decoded state is current.
        self._decoded: OrderedDict[str, tuple[bytes, JobState]] = OrderedDict()

    def stored(self, job_id: str) -> JobState | None:
        raw = self.table.get(job_id.encode())
        if not raw:
            self._decoded.pop(job_id, None)
            return None
        decoded = self._decoded.get(job_id)
        if decoded is not None and decoded[0] == raw:
            self._decoded.move_to_end(job_id)
            return decoded[1]
        return self._remember(job_id, raw, JobState.model_validate_json(raw))

    def _remember(self, job_id: str, raw: bytes, state: JobState) -> JobState:
        self._decoded[job_id] = (raw, state)
        self._decoded.move_to_end(job_id)
        while len(self._decoded) > DECODED_STATES_KEPT:
            self._decoded.popitem(last=False)
        return state

    def get(self, job_id: str, stored: JobState | None | object = _UNREAD) -> JobState | None:
        """The newest state of job_id (stored: its table state, if already read)."""
        if stored is _UNREAD:
            stored = self.stored(job_id)
        held = self._held.get(job_id)
        if held is None:
            return stored
        if stored is not None and stored.updated_at == held.derived_from:
            return held.state
        # The table moved on without this process (another worker owned the partition for a
        # while): what is held is stale.
        del self._held[job_id]
        return stored

    def step(self, event: JobEvent) -> Step:
        """What event does to its job (nothing is stored yet: see keep)."""
        stored = self.stored(event.job_id)
        current = self.get(event.job_id, stored)
        return Step(event, apply_event(current, event), current, stored)

    def changed(self, job_id: str) -> asyncio.Event:
        """An event set at job_id's next change in this process (a new one after each)."""
        return self._watchers.changed(job_id)

    def keep(self, step: Step) -> None:
        """Store step's new state; called once its result, if any, is published."""
        state = step.transition.state
        if state is None:
            return
        self._keep(step, state)
        self._watchers.announce(state.job_id)

    def _keep(self, step: Step, state: JobState) -> None:
        only_progress = step.event.kind is JobEventKind.PROGRESS and \
            step.current is not None and state.status is step.current.status
        job_id, now = state.job_id, self.clock()
        last_store = self._last_store.get(job_id)
        if only_progress and step.stored is not None and last_store is not None and \
                now - last_store < self.progress_store_interval_s:
            self._held[job_id] = _Held(state, step.stored.updated_at)
            return
        self._held.pop(job_id, None)
        raw = state.model_dump_json().encode()
        self.table[job_id.encode()] = raw
        self._remember(job_id, raw, state)
        if state.status.terminal:
            self._last_store.pop(job_id, None)
        else:
            self._last_store[job_id] = now

    def forget(self) -> None:
        """Drop what is held, when partitions are revoked: their jobs' next owner starts from
        the table (at most one interval behind)."""
        self._held.clear()
        self._last_store.clear()
        self._watchers.announce_all()  # they read the table again

    def active_ids(self) -> list[str]:
        """Ids of every job in this process's table partitions (for a full sweep)."""
        return [key.decode() for key, value in self.table.items() if value]
