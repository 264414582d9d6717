"""A message that kills its worker is not run forever: the in-flight journal outlives the
process, the restarted worker counts the deaths, and at RESTYLE_CRASH_ATTEMPTS (3 here) the
job fails `worker_crashed`. Each run here is a real process that really dies (SIGKILL, as the kernel's
out-of-memory killer would send), started again the way a supervisor would."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

from streams.adapters.journal import KEEP_PER_FILE, InFlightJournal

# One worker process: the runtime with its journal under STATE_DIR, one stage, one message
# delivered (always at the same topic, partition and offset, as a redelivery is). The stage
# dies on "poison" (SIGKILL) and, asked to, leaves through the GPU worker's deliberate exit.
WORKER = r"""
import asyncio, json, os, signal, sys
from pathlib import Path
from pydantic import BaseModel

from agents.pipelines import topic_sets
from streams.adapters.journal import InFlightJournal
from streams.core.settings import Settings
from tests.inprocess import InProcessRuntime

state, job_id, behaviour = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

class Work(BaseModel):
    job_id: str

async def stage(work: Work) -> None:
    if behaviour == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if behaviour == "broken-device":  # broken by another request's call: nobody blamed
        from gpu_agent.faults import exit_now
        exit_now("CUDA error: an illegal memory access was encountered")
    print("ran", work.job_id, flush=True)

async def main() -> None:
    rt = InProcessRuntime(Settings(state_dir=state, crash_attempts=3), topic_sets(),
                          InFlightJournal(state / "in-flight" / "cpu"))
    rt.stage_agent("poisoned", stage, Work, "restyle.stage.poisoned")
    await rt.deliver("restyle.stage.poisoned", Work(job_id=job_id), key=job_id)
    for sent in rt.sent(rt.topics.job_events):
        print("event", sent.value.decode(), flush=True)

asyncio.run(main())
"""


def run_worker(state, job_id: str, behaviour: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WORKER, str(state), job_id, behaviour],
                          capture_output=True, text=True, timeout=120)


def failure_of(done: subprocess.CompletedProcess) -> dict:
    events = [json.loads(line.split(" ", 1)[1]) for line in done.stdout.splitlines()
              if line.startswith("event ")]
    [failed] = [e for e in events if e.get("error")]
    return failed["error"]


def test_a_message_that_kills_the_worker_three_times_fails_its_job(tmp_path):
    for _ in range(3):  # dies each time, as a crash loop would
        assert run_worker(tmp_path, "job-poison", "die").returncode == -signal.SIGKILL

    fourth = run_worker(tmp_path, "job-poison", "die")
    assert fourth.returncode == 0, fourth.stderr
    assert "ran job-poison" not in fourth.stdout  # not run a fourth time
    error = failure_of(fourth)
    assert error["code"] == "worker_crashed" and error["attempts"] == 3
    assert error["message"] == ("poisoned: the worker stopped 3 times while it ran this job "
                                "(killed, crashed or its device failed; out of memory is the "
                                "usual cause); it is not run again")

    # The next message at the same spot runs: the record went with the failed one.
    healthy = run_worker(tmp_path, "job-healthy", "run")
    assert healthy.returncode == 0 and "ran job-healthy" in healthy.stdout, healthy.stderr


def test_one_death_is_forgiven_when_the_message_then_succeeds(tmp_path):
    assert run_worker(tmp_path, "job-once", "die").returncode == -signal.SIGKILL
    again = run_worker(tmp_path, "job-once", "run")
    assert "ran job-once" in again.stdout, again.stderr
    assert not any(json.loads(line.split(" ", 1)[1]).get("error")
                   for line in again.stdout.splitlines() if line.startswith("event "))


def test_a_deliberate_exit_for_a_device_it_did_not_break_does_not_count_against_the_job(
        tmp_path):
    """The GPU worker's exit blames only the requests whose model call broke the device
    (tests/gpu_agent/test_device_faults.py); one it merely held goes free."""
    for _ in range(3):  # as many as RESTYLE_CRASH_ATTEMPTS: were they counted, a 4th is refused
        exited = run_worker(tmp_path, "job-device", "broken-device")
        assert exited.returncode == 70, exited.stderr
        assert "this worker exits so its jobs go to a healthy one" in exited.stderr
    healthy_gpu = run_worker(tmp_path, "job-device", "run")
    assert "ran job-device" in healthy_gpu.stdout, healthy_gpu.stderr


def test_the_journal_counts_starts_that_never_finished(tmp_path):
    journal = InFlightJournal(tmp_path)
    assert journal.started("render", "restyle.render-requests", 2, 40) == 0
    # A new process (the old one died): the record is on disk.
    reopened = InFlightJournal(tmp_path)
    assert reopened.started("render", "restyle.render-requests", 2, 40) == 1
    reopened.finished("render", "restyle.render-requests", 2, 40)
    assert InFlightJournal(tmp_path).started("render", "restyle.render-requests", 2, 40) == 0
    # Another partition, another stage: counted apart.
    assert reopened.started("render", "restyle.render-requests", 3, 40) == 0
    assert reopened.started("analyze", "restyle.render-requests", 2, 40) == 0


def test_the_journal_keeps_a_bounded_record_and_survives_a_cut_short_file(tmp_path):
    journal = InFlightJournal(tmp_path)
    for offset in range(KEEP_PER_FILE + 10):  # handled elsewhere, never finished here
        journal.started("embed", "restyle.stage.embed", 0, offset)
    [record] = list(tmp_path.iterdir())
    assert len(json.loads(record.read_text())) == KEEP_PER_FILE
    record.write_text('{"12": 2, "1')  # a write cut short
    assert InFlightJournal(tmp_path).started("embed", "restyle.stage.embed", 0, 12) == 0
