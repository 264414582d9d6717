"""A worker that was not running for longer than its group's session timeout is out of its group
when it wakes, and does not know it yet: it handles nothing more until it has rejoined.

The process stopped (SIGSTOP, a host or VM stalled, a container frozen): no heartbeat went out,
the group gave its partitions to other workers, and they have handled the events since their
last commit. On waking, the worker's streams still hold the events fetched before the stop, and
faust would handle them before the heartbeat tells it that it was dropped: a "zombie". Its
results are fenced where the broker has transactions (streams/tracking/fencing.py), but not
the rest of what it writes: the fault bench's paused CPU worker handled a job's submission again
with a table that had never seen the job, wrote the job back to `queued` in the table's
changelog (over the `done` its new owner had written) and started it again.

So a thread of its own looks at the clock four times a second. A process that is stopped stops
it too, and once awake it sees how long it slept; a busy event loop does not hold it up (a long
model call on the loop is not a pause: the consumer's own thread heartbeats through it). A stop
at least as long as the session timeout means the group has dropped the worker for certain
(no heartbeat can have reached it for that long). Every message of the generation the worker
was in is then left unhandled and never committed (restyle's consumer holds it back: it
comes again to the partition's owner); from the next generation on (the worker rejoins as
soon as its heartbeat is refused) it works as before. The session counts from the last
heartbeat the broker had, up to one heartbeat interval before the stop, so a stop that long
short of the session timeout counts too; a shorter one is not acted on. A stop near the session
timeout may have left the worker in its group after all: if, twice the session timeout after
the wake, the group coordinator still counts the worker in the generation it works in, it works
on, and what it held back comes again to it. It never works on while a rejoin is under way (a
revoke waits for the messages in hand, so a slow one must not outlast the watch).

The coordinator's word counts on its own too: once it has refused the worker's generation
(aiokafka resets it when a heartbeat or commit is refused: the group went on without this
member, whatever the clock says), the worker is out of its group until it has rejoined. A
rebalance alone (another worker joining) does not count: the coordinator moves on to the next
generation while this worker's revoke waits for its messages in hand, and they finish as usual.

A stop can also come in the middle of a message. So what a worker writes for a message asks
again first (ensure_in_group): every table write (streams/tracking/tables.py), a result, a
notification. Once out of its group, the write raises OutOfGroup, and the message is held back
like the ones after it: nothing of it is committed, and its new owner handles it whole. (A write
already handed to the producer before the stop still goes out: only the broker's transactions
fence those, which restyle uses for results: streams/tracking/fencing.py.)
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger("restyle")

# How often the watch looks at the clock.
LOOK_EVERY_S = 0.25


def _clock() -> float:
    """Seconds that go on while the host is suspended, where the platform counts them."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class OutOfGroup(Exception):
    """The worker was stopped past its session timeout, or refused by its group coordinator,
    while it handled a message: it writes nothing more for it (the runtime holds the message
    back for the partition's owner)."""


class PauseWatch:
    def __init__(self, session_timeout_s: float, generation: Callable[[], int | None],
                 clock: Callable[[], float] = _clock, heartbeat_interval_s: float = 0.0,
                 group_generation: Callable[[], int | None] = lambda: None):
        """generation(): the consumer group generation the worker's handlers work in (the one
        its partitions were assigned in). group_generation(): the one its group coordinator
        holds now (-1 once the broker has refused the member; a new one once it has rejoined;
        None where it is not known)."""
        self.session_timeout_s, self.generation, self.clock = session_timeout_s, generation, clock
        self.group_generation = group_generation
        # A stop this long may have let the session expire: the broker counts it from the last
        # heartbeat it had, up to one interval before the stop (never less than half the
        # session: a heartbeat interval set oddly close to it must not make every hiccup one).
        self.dropped_after_s = max(session_timeout_s - heartbeat_interval_s,
                                   session_timeout_s / 2)
        self._last_look = clock()
        self._dropped_in: int | None = None  # the generation a long stop ended
        self._woke_at = 0.0
        self._leaving = False  # the worker leaves its group itself (a shutdown): no refusal
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="restyle-pause-watch",
                                            daemon=True)
            self._thread.start()

    def look(self) -> None:
        """Take the time: a stop since the last look that may have outlasted the session
        timeout, or a coordinator that has refused the member, marks the current generation as
        one the group has dropped this worker from."""
        with self._lock:
            now = self.clock()
            stopped_s, self._last_look = now - self._last_look, now
            generation = self.generation()
            # (Before its first assignment the worker works in no generation: 0.)
            refused = bool(generation) and self.group_generation() == -1
            stopped = stopped_s >= self.dropped_after_s
            fresh = generation != self._dropped_in
            if not (stopped or fresh and refused):
                return
            # Each stop counts from its own wake: a second one in the same generation must not
            # find the first one's watch over already.
            self._dropped_in, self._woke_at = generation, now
            if stopped:
                log.warning("this worker was stopped for %.1f s (its session timeout: %.1f "
                            "s): its group has given its partitions to others. It handles "
                            "nothing more until it has rejoined (generation %s is over for "
                            "it)", stopped_s, self.session_timeout_s, generation)
            elif not self._leaving:
                log.warning("this worker's group coordinator no longer counts it in generation "
                            "%s (the broker refused it, or it left the group): it handles "
                            "nothing more until it has rejoined", generation)

    def leaving(self) -> None:
        """The worker is about to leave its group (a shutdown, or a stop for good): the
        generation it then no longer has is its own doing, not worth a warning (what it holds
        is still held back)."""
        self._leaving = True

    def out_of_group(self) -> bool:
        """Whether the generation the worker is in ended for it while it was stopped, or its
        coordinator has refused it (its handler looks too: the thread may not have run since
        the wake)."""
        self.look()
        with self._lock:
            generation = self.generation()
            if self._dropped_in is None or self._dropped_in != generation:
                return False
            if self.clock() - self._woke_at < 2 * self.session_timeout_s:
                return True
            if self.group_generation() not in (None, generation):
                return True  # refused, or rejoined and not yet given its partitions
            log.warning("no new generation %.0f s after the stop: this worker is still in "
                        "its group (generation %s), and works on", 2 * self.session_timeout_s,
                        self._dropped_in)
            self._dropped_in = None
            return False

    def ensure_in_group(self) -> None:
        """Before a write for the message being handled: raise OutOfGroup if the worker was
        stopped out of its group since it took the message."""
        if self.out_of_group():
            raise OutOfGroup(f"this worker is out of its group (generation "
                             f"{self.generation()} is over for it)")

    def _watch(self) -> None:
        while True:
            time.sleep(LOOK_EVERY_S)
            self.look()
