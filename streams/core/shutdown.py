"""A stop that cannot finish still ends.

On SIGTERM a worker drains (Runtime.drain), then faust commits its offsets, flushes its
producer and leaves the group, each of which can wait on the broker (the producer's request
timeout is a minute or more). Workers whose broker had been killed were seen still running
8 s after SIGTERM, and were killed. So the stop has a deadline; past it the process exits
without committing, which loses nothing (what was not committed is delivered again to
whichever worker holds the partitions next).
"""
from __future__ import annotations

import logging
import os
import threading

from streams.adapters.journal import release_in_flight

log = logging.getLogger("restyle")

# The exit status of a stop that ran out of time (EX_TEMPFAIL: try again).
STOP_TIMED_OUT = 75


def exit_if_still_running(after_s: float, why: str) -> threading.Timer:
    """Exit the process after after_s unless it has exited by then."""
    def give_up() -> None:
        log.critical("still stopping %g s after %s: exiting without a clean stop (what was "
                     "not committed is delivered again)", after_s, why)
        release_in_flight()  # the messages in flight did not cause this
        logging.shutdown()
        os._exit(STOP_TIMED_OUT)

    timer = threading.Timer(after_s, give_up)
    timer.daemon = True
    timer.start()
    return timer
