"""A worker whose rebalance does not end stops, so its supervisor starts it again in the group
(faust never polls a worker that went past its poll interval back into its group)."""
from __future__ import annotations

from streams.core.rebalance_watch import stuck_for


def test_a_rebalance_is_timed_from_the_first_look_that_saw_it():
    assert stuck_for(False, None, 100.0) == (None, 0.0)
    assert stuck_for(True, None, 100.0) == (100.0, 0.0)
    assert stuck_for(True, 100.0, 130.5) == (100.0, 30.5)
    assert stuck_for(False, 100.0, 131.0) == (None, 0.0)  # it ended: the next one starts anew



def test_a_running_worker_whose_rebalance_outlasts_the_limit_stops_saying_why(e2e, tmp_path):
    """Two workers of a group of their own (so the stack's workers are not disturbed): when
    the second joins, the first's rebalance takes seconds, past a limit of 1 s."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request
    import uuid

    import pytest

    from streams.stack.embedded import free_port
    from tests.conftest import E2E_BROKERS

    if e2e.broker != E2E_BROKERS[0]:
        pytest.skip("the watch does not depend on the broker: run on the first one")
    env = {**os.environ, **e2e.stack.env, "RESTYLE_STATE_DIR": str(tmp_path),
           "RESTYLE_APP_ID": f"stuck-{uuid.uuid4().hex[:6]}", "RESTYLE_REBALANCE_STUCK_S": "1"}
    ports = [free_port(), free_port()]
    logs = [open(tmp_path / f"worker-{n}.log", "w+") for n in range(2)]
    command = [sys.executable, "-m", "streams.cli.main", "worker", "cpu", "--web-port"]
    first = subprocess.Popen([*command, str(ports[0])], env=env, stdout=logs[0],
                             stderr=subprocess.STDOUT)
    second = None
    try:
        deadline = time.monotonic() + 180
        while True:  # the first is up, its start-up rebalance over
            assert time.monotonic() < deadline and first.poll() is None, "never got ready"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/readyz", timeout=5):
                    break
            except OSError:
                time.sleep(1)
        second = subprocess.Popen([*command, str(ports[1])], env=env, stdout=logs[1],
                                  stderr=subprocess.STDOUT)
        assert first.wait(180) != 0
        logs[0].seek(0)
        said = logs[0].read()
        assert "its rebalance has not ended in" in said and "RESTYLE_REBALANCE_STUCK_S 1" in said
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(30)
        for log in logs:
            log.close()
