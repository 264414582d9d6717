"""A stop that cannot finish still ends.

On SIGTERM a worker drains (Runtime.drain), then faust commits its offsets, flushes its
producer and leaves the group, each of which can wait on the broker (the producer's request
timeout is a minute or more). Workers whose broker had been killed were seen still running
8 s after SIGTERM, and were killed. So the stop has a deadline; past it the process exits
without committing, which loses nothing (what was not committed is delivered again to
whichever worker holds the partitions next).
"""
from __future__ import annotations

import errno
import logging
import os
import sys
import threading
from typing import Iterable

from streams.adapters.journal import release_in_flight

log = logging.getLogger("restyle")

# The exit status of a stop that ran out of time (EX_TEMPFAIL: try again).
STOP_TIMED_OUT = 75

# The exit status of a worker whose web port was taken before it could bind it (EX_OSERR):
# `restyle up` starts it again on a new port, where the port was its own choice.
PORT_TAKEN = 71


def port_taken(error: BaseException | None) -> bool:
    """error is a listener's failure to bind a port another process holds."""
    return isinstance(error, OSError) and error.errno == errno.EADDRINUSE


def exit_at_once(status: int, message: str,
                 blamed: Iterable[tuple[str, str, int, int]] = ()) -> None:
    """Leave now, committing nothing, after saying why (message, logged critical): what this
    worker held is delivered again. The messages in flight are not blamed for it (their
    in-flight records go), but those in `blamed` ((stage, topic, partition, offset): the
    exit counts as a death of theirs, streams/adapters/journal.py)."""
    try:
        log.critical(message)
        release_in_flight(blamed)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
    finally:  # whatever failed above, the process ends
        os._exit(status)


def exit_if_still_running(after_s: float, why: str) -> threading.Timer:
    """Exit the process after after_s unless it has exited by then."""
    timer = threading.Timer(after_s, exit_at_once, args=(STOP_TIMED_OUT, (
        f"still stopping {after_s:g} s after {why}: exiting without a clean stop (what was "
        f"not committed is delivered again)")))
    timer.daemon = True
    timer.start()
    return timer
