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
soon as its heartbeat is refused) it works as before. A shorter stop is not acted on. A stop
only just longer than the session timeout may have left the worker in its group after all (a
heartbeat sent just before it): if no new generation has come twice the session timeout after
the wake, the worker works on in the one it is in, and what it held back comes again to it.

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
    """The worker was stopped past its session timeout while it handled a message: it writes
    nothing more for it (the runtime holds the message back for the partition's owner)."""


class PauseWatch:
    def __init__(self, session_timeout_s: float, generation: Callable[[], int | None],
                 clock: Callable[[], float] = _clock):
        """generation(): the consumer group generation the worker is in now."""
        self.session_timeout_s, self.generation, self.clock = session_timeout_s, generation, clock
        self._last_look = clock()
        self._dropped_in: int | None = None  # the generation a long stop ended
        self._woke_at = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="restyle-pause-watch",
                                            daemon=True)
            self._thread.start()

    def look(self) -> None:
        """Take the time: a stop since the last look that outlasted the session timeout
        marks the current generation as one the group has dropped this worker from."""
        with self._lock:
            now = self.clock()
            stopped_s, self._last_look = now - self._last_look, now
            if stopped_s < self.session_timeout_s:
                return
            generation = self.generation()
            if generation != self._dropped_in:
                self._dropped_in, self._woke_at = generation, now
                log.warning("this worker was stopped for %.1f s, longer than its session "
                            "timeout (%.1f s): its group has given its partitions to others. "
                            "It handles nothing more until it has rejoined (generation %s "
                            "is over for it)", stopped_s, self.session_timeout_s, generation)

    def out_of_group(self) -> bool:
        """Whether the generation the worker is in ended for it while it was stopped (its
        handler looks too: the thread may not have run since the wake)."""
        self.look()
        with self._lock:
            if self._dropped_in is None or self._dropped_in != self.generation():
                return False
            if self.clock() - self._woke_at < 2 * self.session_timeout_s:
                return True
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
                             f"{self._dropped_in} ended for it while it was stopped)")

    def _watch(self) -> None:
        while True:
            time.sleep(LOOK_EVERY_S)
            self.look()
