"""A stack supervised from a thread of its own (what the end-to-end tests run, as `restyle up`
does from its main loop): a worker that exits is started again, and the exit is kept in words;
a worker taken out of the stack is left alone; stopping the stack stops the supervision first."""
from __future__ import annotations

import sys
import time

from streams.stack.embedded import Stack, start_process


def short_lived_worker(tmp_path, name: str, seconds: float = 0.3):
    return start_process(name, [sys.executable, "-c",
                                f"import sys, time; time.sleep({seconds}); sys.exit(3)"],
                         tmp_path, supervised=True, kind="worker")


def wait_until(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_a_worker_that_exits_is_started_again_and_its_exit_kept(tmp_path):
    first = short_lived_worker(tmp_path, "cpu-worker-0")
    stack = Stack([first])
    stack.supervise_in_background(interval_s=0.1)
    try:
        wait_until(lambda: stack.services[0] is not first)
        assert stack.services[0].restarts == 1
        assert stack.exits[0].startswith("cpu-worker-0 exited with code 3 after ")
    finally:
        stack.stop()
    settled = len(stack.exits)
    time.sleep(1.5)  # stopped: nothing is started again
    assert len(stack.exits) == settled
    assert all(service.process.poll() is not None for service in stack.services)


def test_a_worker_taken_out_of_the_stack_is_not_started_again(tmp_path):
    kept = start_process("cpu-worker-0", [sys.executable, "-c", "import time; time.sleep(60)"],
                         tmp_path, supervised=True, kind="worker")
    leaving = short_lived_worker(tmp_path, "cpu-worker-extra")
    stack = Stack([kept, leaving])
    stack.services.remove(leaving)  # as a test does before stopping a worker for good
    stack.supervise_in_background(interval_s=0.1)
    try:
        leaving.process.wait(10)
        time.sleep(1.5)
        assert stack.services == [kept] and stack.exits == []
    finally:
        stack.stop()
    assert kept.process.poll() is not None
