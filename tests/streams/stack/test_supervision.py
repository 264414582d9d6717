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


def test_a_signal_during_a_health_probe_stops_the_start_instead_of_failing_the_probe(tmp_path):
    """`restyle up` turns SIGTERM while it starts into StopRequested. The start-up probes a
    worker's health in a loop that takes any error for "not ready yet"; a signal landing
    inside a probe must still stop the start (CI once saw `up` become ready after a SIGTERM)."""
    import signal
    import socket

    import pytest

    from streams.cli.main import StopRequested
    from streams.core.settings import Settings
    from streams.stack.up import RestyleStack

    # A worker that accepts the probe's connection and never answers: the probe waits inside
    # urlopen, where the signal lands.
    silent_worker = socket.socket()
    silent_worker.bind(("127.0.0.1", 0))
    silent_worker.listen()
    stack = RestyleStack(Settings(state_dir=str(tmp_path)))

    def on_signal(signum, _frame):
        raise StopRequested(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGALRM, on_signal)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    started = time.monotonic()
    try:
        with pytest.raises(StopRequested):
            stack.wait_healthy([silent_worker.getsockname()[1]], timeout_s=10)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        silent_worker.close()
    assert time.monotonic() - started < 3


# Stands in for a worker: serves /healthz on its --web-port, or exits as a worker does when
# another process holds that port (streams/worker.py).
HEALTH_SERVER = r"""
import http.server, sys
from streams.core.shutdown import PORT_TAKEN
port = int(sys.argv[sys.argv.index("--web-port") + 1])

class Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

try:
    server = http.server.HTTPServer(("127.0.0.1", port), Healthy)
except OSError:
    sys.exit(PORT_TAKEN)
server.serve_forever()
"""


def test_a_worker_whose_port_was_taken_before_it_bound_it_starts_again_on_a_new_one(tmp_path):
    """`restyle up` chooses free ports, and another process can take one before the worker
    binds it: the start goes on, with that worker on a new port."""
    import socket

    from streams.core.settings import Settings
    from streams.stack.up import RestyleStack

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    stack = RestyleStack(Settings(state_dir=str(tmp_path)))
    worker = start_process("gpu-worker-0", [sys.executable, "-c", HEALTH_SERVER, "--web-port",
                                            str(taken)], tmp_path, port=taken, supervised=True,
                           kind="worker")
    worker.port_movable = True
    stack.stack.services.append(worker)
    try:
        stack.wait_healthy([taken], timeout_s=30)
        moved = stack.stack.service_named("gpu-worker-0")
        assert moved.port != taken and moved.process.poll() is None
        assert moved.restarts == 0 and stack.stack.exits == []  # not a crash: no backoff
    finally:
        stack.stop()
        squatter.close()


def test_a_worker_on_a_port_the_user_set_is_not_moved_and_the_start_fails(tmp_path):
    import socket

    import pytest

    from streams.core.settings import Settings
    from streams.stack.up import RestyleStack

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    stack = RestyleStack(Settings(state_dir=str(tmp_path)))
    stack.stack.services.append(start_process(
        "cpu-worker-0", [sys.executable, "-c", HEALTH_SERVER, "--web-port", str(taken)],
        tmp_path, port=taken, supervised=True, kind="worker"))
    try:
        with pytest.raises(RuntimeError, match="cpu-worker-0 exited with code 71"):
            stack.wait_healthy([taken], timeout_s=30)
    finally:
        stack.stop()
        squatter.close()
