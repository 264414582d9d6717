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
# What the other hosts told of their deaths, as the worker-deaths topic holds it (the test
# carries it from one process to the next, as the broker would).
told = json.loads(Path(sys.argv[4]).read_text()) if len(sys.argv) > 4 else {}

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
    for key, value in told.items():
        rt.worker_deaths.apply(key.encode(), json.dumps(value).encode())
    await rt.tell_deaths()
    tell(rt)
    if behaviour != "idle":  # "idle": a worker that starts but is given no message
        await rt.deliver("restyle.stage.poisoned", Work(job_id=job_id), key=job_id)
    tell(rt)
    for sent in rt.sent(rt.topics.job_events):
        print("event", sent.value.decode(), flush=True)

told_here = []

def tell(rt) -> None:  # what this process told the other hosts (printed before it may die)
    for sent in rt.sent(rt.topics.worker_deaths)[len(told_here):]:
        print("told", sent.key.decode(), sent.value.decode(), flush=True)
        told_here.append(sent)

asyncio.run(main())
"""


def run_worker(state, job_id: str, behaviour: str, topic=None) -> subprocess.CompletedProcess:
    """topic: a file standing for the worker-deaths topic: what the process tells is added to
    it as the broker would keep it (the latest record per key)."""
    extra = [str(topic)] if topic else []
    done = subprocess.run([sys.executable, "-c", WORKER, str(state), job_id, behaviour, *extra],
                          capture_output=True, text=True, timeout=120)
    if topic:
        records = json.loads(topic.read_text())
        for line in done.stdout.splitlines():
            if line.startswith("told "):
                _, key, value = line.split(" ", 2)
                records[key] = json.loads(value)
        topic.write_text(json.dumps(records))
    return done


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


def test_deaths_on_other_hosts_count_toward_the_same_limit(tmp_path):
    """Host A's worker dies twice on the message and is restarted there (telling the other
    hosts of those deaths as it starts); the message moves to host B, whose worker dies once on
    it: at its next start B counts 1 + 2 = 3 deaths and fails the job, where counting its own
    alone it would run the message again (and A's two deaths would start over on each host
    the message reached)."""
    host_a, host_b, topic = tmp_path / "a", tmp_path / "b", tmp_path / "worker-deaths.json"
    topic.write_text("{}")
    for _ in range(2):
        assert run_worker(host_a, "job-roams", "die", topic).returncode == -signal.SIGKILL
    restarted_a = run_worker(host_a, "job-roams", "idle", topic)  # its partitions moved on
    assert restarted_a.returncode == 0, restarted_a.stderr
    [(key, told_by_a)] = json.loads(topic.read_text()).items()
    assert told_by_a["deaths"] == 2 and key.startswith("poisoned.restyle.stage.poisoned.")

    assert run_worker(host_b, "job-roams", "die", topic).returncode == -signal.SIGKILL
    again_on_b = run_worker(host_b, "job-roams", "die", topic)
    assert again_on_b.returncode == 0, again_on_b.stderr
    assert "ran job-roams" not in again_on_b.stdout
    error = failure_of(again_on_b)
    assert error["code"] == "worker_crashed" and error["attempts"] == 3
    # Its job failed: the counts stand (a message that ran to its end would be forgiven, but
    # this one, should its commit be lost, must not start a fresh count anywhere).
    assert sorted(record["deaths"] for record in json.loads(topic.read_text()).values()) \
        == [1, 2]


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
    journal.close()  # the process dies: the record is on disk, the slot free
    reopened = InFlightJournal(tmp_path)
    assert reopened.directory == journal.directory
    assert reopened.started("render", "restyle.render-requests", 2, 40) == 1
    reopened.finished("render", "restyle.render-requests", 2, 40)
    # Another partition, another stage: counted apart.
    assert reopened.started("render", "restyle.render-requests", 3, 40) == 0
    assert reopened.started("analyze", "restyle.render-requests", 2, 40) == 0
    reopened.close()
    assert InFlightJournal(tmp_path).started("render", "restyle.render-requests", 2, 40) == 0


def test_a_deliberate_exit_clears_what_the_process_held_not_what_it_inherited(tmp_path):
    journal = InFlightJournal(tmp_path)
    journal.started("render", "restyle.render-requests", 2, 40)
    journal.close()  # died with it
    successor = InFlightJournal(tmp_path)
    successor.started("render", "restyle.render-requests", 2, 41)
    successor.started("render", "restyle.render-requests", 2, 42)
    successor.release_all([("render", "restyle.render-requests", 2, 42)])  # a broken GPU
    successor.close()
    after = InFlightJournal(tmp_path)
    assert after.inherited == {"render.restyle.render-requests.2@40": 1,
                               "render.restyle.render-requests.2@42": 1}


def test_the_journal_keeps_a_bounded_record_and_survives_a_cut_short_file(tmp_path):
    journal = InFlightJournal(tmp_path)
    for offset in range(KEEP_PER_FILE + 10):  # handled elsewhere, never finished here
        journal.started("embed", "restyle.stage.embed", 0, offset)
    journal.close()
    [record] = [path for path in journal.directory.iterdir() if not path.name.startswith(".")]
    assert len(json.loads(record.read_text())) == KEEP_PER_FILE
    record.write_text('{"12": 2, "1')  # a write cut short
    assert InFlightJournal(tmp_path).started("embed", "restyle.stage.embed", 0, 12) == 0


def test_each_live_worker_of_a_role_has_a_journal_of_its_own(tmp_path):
    journal = InFlightJournal(tmp_path)
    journal.started("render", "restyle.render-requests", 2, 40)
    # Another worker of the role on this machine, started now: a slot and an identity of its
    # own; the first one's message is in flight in a live process, not a death.
    beside = InFlightJournal(tmp_path)
    assert beside.directory != journal.directory and beside.identity != journal.identity
    assert beside.inherited == {} and beside.unheld() == {}
    # A third dies (a process of its own, killed) holding a message.
    died = subprocess.run([sys.executable, "-c", (
        "import os, sys; from streams.adapters.journal import InFlightJournal; "
        "j = InFlightJournal(sys.argv[1]); print(j.identity); "
        "j.started('render', 'restyle.render-requests', 3, 7); os._exit(9)"), str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert died.returncode == 9, died.stderr
    dead = died.stdout.strip()
    # Until a worker takes its slot, the others can tell its deaths on its behalf...
    assert journal.unheld() == {dead: {"render.restyle.render-requests.3@7": 1}}
    # ...and the worker started in its place takes it over, identity and all.
    replacement = InFlightJournal(tmp_path)
    assert replacement.identity == dead
    assert replacement.inherited == {"render.restyle.render-requests.3@7": 1}
    assert journal.unheld() == {}


def test_deaths_told_before_the_message_was_written_are_of_another_message():
    from schemas.jobs import WorkerDeaths
    from streams.core.deaths import elsewhere, forgiven, key_of

    def told(journal: str, deaths: int, at: float) -> tuple[str, WorkerDeaths]:
        return key_of("render.t.0@5", journal), WorkerDeaths(spot="render.t.0@5",
                                                              journal=journal, deaths=deaths,
                                                              at=at)
    records = dict([told("a", 2, 1000.0), told("b", 1, 1010.0), told("mine", 4, 1010.0),
                    told("old", 3, 100.0)])
    # Mine are counted by my journal; "old" was told before the message at this spot (a topic
    # recreated since) was written.
    assert elsewhere(records, "render.t.0@5", "mine", since=990.0) == 3
    assert elsewhere(records, "render.t.0@6", "mine", since=990.0) == 0
    assert {record.deaths for _, record in forgiven(records, "render.t.0@5", 2000.0)} == {0}


def test_a_death_another_host_forgave_is_not_told_again(tmp_path):
    """Host A's worker dies on the message and, restarted, tells of it; the message moves to
    host B, where it runs to its end, and B forgives it (every count of it back to 0, saying
    how many deaths it forgave). A's journal still holds the death (A never finished the
    message): at A's next start it is dropped, not told again, which would bring the count
    back for a message that is done."""
    host_a, host_b, topic = tmp_path / "a", tmp_path / "b", tmp_path / "worker-deaths.json"
    topic.write_text("{}")
    assert run_worker(host_a, "job-moved", "die", topic).returncode == -signal.SIGKILL
    assert run_worker(host_a, "job-moved", "idle", topic).returncode == 0
    [told_by_a] = json.loads(topic.read_text()).values()
    assert told_by_a["deaths"] == 1

    on_b = run_worker(host_b, "job-moved", "run", topic)
    assert "ran job-moved" in on_b.stdout, on_b.stderr
    [forgiven] = json.loads(topic.read_text()).values()
    assert (forgiven["deaths"], forgiven["forgiven"]) == (0, 1)

    restarted_a = run_worker(host_a, "job-moved", "idle", topic)
    assert restarted_a.returncode == 0, restarted_a.stderr
    assert "told " not in restarted_a.stdout
    assert list(json.loads(topic.read_text()).values()) == [forgiven]
    assert InFlightJournal(host_a / "in-flight" / "cpu").inherited == {}


def test_a_message_looks_up_the_deaths_told_of_its_own_spot_as_the_view_changes():
    from schemas.jobs import WorkerDeaths
    from streams.core.compacted import CompactedView
    from streams.core.deaths import BySpot, key_of

    view = CompactedView({}, "restyle.worker-deaths", WorkerDeaths)
    by_spot = BySpot(view)

    def tell(spot: str, journal: str, deaths: int) -> None:
        record = WorkerDeaths(spot=spot, journal=journal, deaths=deaths, at=1.0)
        view.apply(key_of(spot, journal).encode(), record.model_dump_json().encode())

    assert by_spot("render.t.0@5") == {}
    tell("render.t.0@5", "a", 2)
    tell("render.t.0@6", "a", 1)
    assert {r.deaths for r in by_spot("render.t.0@5").values()} == {2}
    tell("render.t.0@5", "b", 1)  # a change after a lookup is seen by the next
    assert sorted(r.deaths for r in by_spot("render.t.0@5").values()) == [1, 2]
    view.apply(key_of("render.t.0@5", "a").encode(), None)  # a tombstone
    assert [r.journal for r in by_spot("render.t.0@5").values()] == ["b"]


def test_a_journal_forgets_what_was_finished_elsewhere_but_not_what_it_started_since(tmp_path):
    """A message forgiven elsewhere is dropped from the slot at start; but one this process
    has already started again (its first message can come before the start-up check) keeps
    its count: the start is this process's, and its end clears it."""
    dead = InFlightJournal(tmp_path)
    dead.started("render", "t", 0, 5)
    dead.started("render", "t", 0, 6)
    dead.close()  # the process dies holding both

    journal = InFlightJournal(tmp_path)
    assert journal.started("render", "t", 0, 6) == 1  # taken again before the check
    journal.forget("render.t.0@5")
    journal.forget("render.t.0@6")
    assert journal.inherited == {"render.t.0@6": 1}
    # When it last wrote of a message: what a forgiveness must come after
    assert journal.written_at(journal.identity, "render.t.0@6") == \
        (journal.directory / "render.t.0").stat().st_mtime > 0
    assert journal.written_at("another-slot", "render.t.0@6") == 0.0
    journal.close()
    assert InFlightJournal(tmp_path).inherited == {"render.t.0@6": 2}


def test_only_deaths_all_forgiven_since_count_as_finished_elsewhere():
    from schemas.jobs import WorkerDeaths
    from streams.core.deaths import finished_elsewhere, key_of

    def record(spot: str, deaths: int, forgiven: int = 0) -> tuple[str, WorkerDeaths]:
        return key_of(spot, "mine"), WorkerDeaths(spot=spot, journal="mine", deaths=deaths,
                                                  at=1.0, forgiven=forgiven)
    records = dict([record("r.t.0@1", 0, forgiven=2), record("r.t.0@2", 0, forgiven=1),
                    record("r.t.0@3", 2), record("r.t.0@5", 0, forgiven=3)])
    left = {"r.t.0@1": 2,  # forgiven for both its deaths: finished
            "r.t.0@2": 2,  # died here once more after the forgiveness: told
            "r.t.0@3": 2,  # told, never forgiven: told
            "r.t.0@4": 1,  # never told (the view had not read it, or the tell failed): told
            "r.t.0@5": 1}  # its forgiveness (at 1.0) is older than this journal's record
    written_at = {"r.t.0@5": 1000.0}.get  # (a topic recreated since: another message)
    assert finished_elsewhere(records, left, "mine", lambda spot: written_at(spot, 0.0),
                              clock_skew_s=60.0) == {"r.t.0@1"}
