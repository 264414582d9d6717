"""A worker stopped for longer than its session timeout handles nothing of the generation it
was in once it wakes (its group has moved its partitions on); a shorter stop changes nothing."""
from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel

from schemas import ErrorCode, StageFailure
from streams.core.pauses import PauseWatch

SESSION_TIMEOUT_S = 10.0
HEARTBEAT_INTERVAL_S = 0.8


class Worker:
    """A worker's clock and consumer group generation, moved by hand: the one its handlers
    work in (generation) and the one its group coordinator holds (coordinator; None: not
    known, as before the consumer starts)."""

    def __init__(self):
        self.now, self.generation, self.coordinator = 1000.0, 4, None
        self.watch = PauseWatch(SESSION_TIMEOUT_S, lambda: self.generation, lambda: self.now,
                                heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
                                group_generation=lambda: self.coordinator)

    def runs_for(self, seconds: float) -> None:
        """Running: the watch's thread looks four times a second."""
        for _ in range(int(seconds * 4)):
            self.now += 0.25
            self.watch.look()

    def stopped_for(self, seconds: float) -> None:
        self.now += seconds


def test_a_worker_stopped_past_its_session_timeout_handles_nothing_until_it_rejoins(caplog):
    worker = Worker()
    worker.runs_for(5)
    worker.stopped_for(25)
    assert worker.watch.out_of_group()  # the first message after the wake: not handled
    worker.runs_for(2)
    assert worker.watch.out_of_group()  # still generation 4: the rejoin is under way
    worker.generation = 5  # rejoined
    assert not worker.watch.out_of_group()
    assert "stopped for 25.0 s (its session timeout: 10.0 s)" in caplog.text


def test_a_stop_shorter_than_the_session_timeout_or_a_busy_worker_changes_nothing():
    worker = Worker()
    worker.stopped_for(9)
    assert not worker.watch.out_of_group()
    worker.runs_for(60)  # a minute of work, however busy its event loop
    assert not worker.watch.out_of_group()


def test_a_worker_still_in_its_generation_long_after_the_stop_works_on(caplog):
    """A stop only just past the session timeout may not have cost the worker its place."""
    worker = Worker()
    worker.stopped_for(10.1)
    assert worker.watch.out_of_group()
    worker.runs_for(19)
    assert worker.watch.out_of_group()
    worker.runs_for(2)  # twice the session timeout since the wake, and no new generation
    assert not worker.watch.out_of_group()
    assert "still in its group (generation 4)" in caplog.text


def test_a_stop_within_a_heartbeat_of_the_session_timeout_counts():
    """The broker counts the session from the last heartbeat it had, which may have gone out
    up to one interval before the stop."""
    worker = Worker()
    worker.stopped_for(SESSION_TIMEOUT_S - HEARTBEAT_INTERVAL_S / 2)
    assert worker.watch.out_of_group()


def test_a_worker_its_coordinator_has_refused_is_out_of_its_group_whatever_its_clock():
    """No stop was seen (a long one just short of the mark, or a commit refused), but the
    broker refused the member: aiokafka reset its generation."""
    worker = Worker()
    worker.coordinator = 4
    worker.runs_for(5)
    assert not worker.watch.out_of_group()
    worker.coordinator = -1  # a heartbeat refused: the group went on without it
    assert worker.watch.out_of_group()
    worker.coordinator = 5  # rejoined, its partitions not yet given to it
    assert worker.watch.out_of_group()
    worker.generation = 5
    assert not worker.watch.out_of_group()


def test_a_rebalance_without_a_stop_or_a_refusal_leaves_the_worker_in_its_group():
    """Another worker joining moves the group to a new generation: this one's messages in hand
    finish as usual (its revoke waits for them) while it rejoins."""
    worker = Worker()
    worker.coordinator = 4
    worker.runs_for(5)
    worker.coordinator = 5  # joined the next generation, partitions not yet assigned
    assert not worker.watch.out_of_group()


def test_a_worker_leaving_its_group_itself_is_not_warned_about(caplog):
    """A shutdown leaves the group (aiokafka resets the generation as a refusal does): what the
    worker still holds is held back, and the log does not cry refusal."""
    worker = Worker()
    worker.coordinator = 4
    worker.watch.leaving()
    worker.coordinator = -1
    assert worker.watch.out_of_group()
    assert "refused" not in caplog.text


def test_a_rejoin_held_up_by_a_slow_message_never_lets_the_worker_work_on():
    """A revoke waits for the messages in hand: one that takes long after the wake keeps the
    generation the worker works in unchanged past twice the session timeout, and the
    worker must not take that for still being in its group."""
    worker = Worker()
    worker.coordinator = 4
    worker.stopped_for(25)
    worker.runs_for(0.5)
    worker.coordinator = -1  # its first heartbeat after the wake is refused
    worker.runs_for(30)
    assert worker.watch.out_of_group()
    worker.generation = worker.coordinator = 5
    assert not worker.watch.out_of_group()


def in_process(tmp_path, worker: Worker):
    """A runtime in process, whose clock and group are the worker's."""
    from agents.pipelines import topic_sets
    from streams.core.settings import Settings
    from tests.inprocess import InProcessRuntime

    rt = InProcessRuntime(Settings(state_dir=tmp_path), topic_sets())
    rt.pauses = worker.watch
    return rt


def test_a_worker_stopped_in_the_middle_of_a_message_writes_nothing_more_for_it(tmp_path):
    """What it wrote before the stop stands (its new owner writes the same again); a table
    write after it is refused, and the message is left uncommitted for the partition's owner,
    neither failed nor dead-lettered nor run again here."""
    import asyncio

    import faust
    from pydantic import BaseModel

    from agents.pipelines import topic_sets
    from streams.core.settings import Settings
    from streams.tracking.tables import open_tables
    from tests.inprocess import InProcessRuntime

    class Work(BaseModel):
        job_id: str

    worker = Worker()
    rt = InProcessRuntime(Settings(state_dir=tmp_path), topic_sets())
    rt.pauses = worker.watch
    app = faust.App("pause-test", broker="kafka://localhost:1", store="memory://")
    tables = open_tables(app, Settings(state_dir=tmp_path), guard=rt.pauses.ensure_in_group)
    runs = []

    async def stage(work: Work) -> None:
        runs.append(work.job_id)
        await rt.send("restyle.stage.after", work.job_id, work)  # before the stop
        worker.stopped_for(25)  # SIGSTOP here, SIGCONT 25 s later
        tables.batches[work.job_id.encode()] = b"{}"  # stale state over the new owner's

    rt.stage_agent("pausing", stage, Work, "restyle.stage.pausing")
    asyncio.run(rt.deliver("restyle.stage.pausing", Work(job_id="job-1"), key="job-1"))

    assert runs == ["job-1"]  # not run again here
    assert [m.key for m in rt.sent("restyle.stage.after")] == [b"job-1"]
    assert b"job-1" not in tables.batches.data
    assert [m.key for m in rt.app.consumer.held] == [b"job-1"]
    assert rt.sent(rt.topics.dlq) == [] and rt.sent(rt.topics.job_events) == []


def test_a_worker_woken_from_a_long_stop_times_out_none_of_its_stale_tables_jobs(tmp_path):
    """Its table's running job looks 70 s without progress (60 s of it the stop); the job's
    new owner runs it. A worker that was not stopped gives the same job up."""
    import asyncio

    from agents.pipelines import topic_sets
    from schemas import JobState, JobStatus
    from streams.core.settings import Settings
    from streams.tracking.jobboard import JobBoard
    from streams.tracking.jobs import give_up_stalled
    from tests.inprocess import InProcessRuntime

    def sweep_after(stop_s: float) -> list[str]:
        worker = Worker()
        rt = InProcessRuntime(Settings(state_dir=tmp_path, job_timeout_s=60), topic_sets())
        rt.pauses = worker.watch
        running = JobState(job_id="job-1", status=JobStatus.GENERATING, created_at=0.0,
                           updated_at=1000.0)
        board = JobBoard({b"job-1": running.model_dump_json().encode()}, 5.0)
        worker.stopped_for(stop_s)
        asyncio.run(give_up_stalled(rt, board, {"job-1"}, now=1070.0))
        return [m.value.decode() for m in rt.sent(rt.topics.job_events)]

    assert sweep_after(stop_s=60) == []
    [given_up] = sweep_after(stop_s=0)
    assert '"code":"timeout"' in given_up and "no progress for 60s while generating" in given_up


class Work(BaseModel):
    job_id: str


@pytest.mark.parametrize("error", [
    ConnectionResetError("Connection reset by peer"),  # its storage dropped the connection
    StageFailure(ErrorCode.BROKER_UNAVAILABLE, "the broker did not acknowledge a send"),
])
def test_an_error_after_a_stop_that_cost_the_group_fails_nothing(tmp_path, error):
    """What a stage was waiting on when the worker was stopped fails as it wakes: that is the
    stop's doing, and the job is its new owner's now. It is neither retried, failed nor
    dead-lettered here; the message is held back."""
    worker = Worker()
    rt = in_process(tmp_path, worker)
    runs = []

    async def stage(work: Work) -> None:
        runs.append(work.job_id)
        worker.stopped_for(25)
        raise error

    rt.stage_agent("pausing", stage, Work, "restyle.stage.pausing")
    asyncio.run(rt.deliver("restyle.stage.pausing", Work(job_id="job-1"), key="job-1"))

    assert runs == ["job-1"]
    assert [m.key for m in rt.app.consumer.held] == [b"job-1"]
    assert rt.sent(rt.topics.dlq) == [] and rt.sent(rt.topics.job_events) == []


def test_a_send_after_a_stop_that_cost_the_group_is_not_made(tmp_path):
    """The job's next stage (or its GPU render) is its new owner's to ask for."""
    worker = Worker()
    rt = in_process(tmp_path, worker)

    async def stage(work: Work) -> None:
        worker.stopped_for(25)
        await rt.send("restyle.stage.after", work.job_id, work)

    rt.stage_agent("pausing", stage, Work, "restyle.stage.pausing")
    asyncio.run(rt.deliver("restyle.stage.pausing", Work(job_id="job-1"), key="job-1"))

    assert rt.sent("restyle.stage.after") == []
    assert [m.key for m in rt.app.consumer.held] == [b"job-1"]
    assert rt.sent(rt.topics.dlq) == [] and rt.sent(rt.topics.job_events) == []


def test_a_batch_that_fails_after_a_stop_is_left_to_the_partitions_owners(tmp_path):
    """A batch stage that fails on waking dead-letters nothing: its messages are held back."""
    worker = Worker()
    rt = in_process(tmp_path, worker)

    async def stage(works: list[Work]) -> None:
        worker.stopped_for(25)
        raise TimeoutError("the index did not answer")

    rt.stage_agent("batching", stage, Work, "restyle.stage.batching", batch=(10, 0.1))
    asyncio.run(rt.deliver("restyle.stage.batching", Work(job_id="job-1"), key="job-1"))

    assert [m.key for m in rt.app.consumer.held] == [b"job-1"]
    assert rt.sent(rt.topics.dlq) == []


def test_a_failure_without_a_stop_still_fails_the_job(tmp_path):
    """(The other side of the tests above: the same stage error, no stop.)"""
    worker = Worker()
    rt = in_process(tmp_path, worker)

    async def stage(work: Work) -> None:
        raise StageFailure(ErrorCode.BROKER_UNAVAILABLE, "the broker did not acknowledge")

    rt.stage_agent("failing", stage, Work, "restyle.stage.failing")
    asyncio.run(rt.deliver("restyle.stage.failing", Work(job_id="job-1"), key="job-1"))

    [failed] = [json.loads(m.value) for m in rt.sent(rt.topics.job_events)]
    assert failed["kind"] == "failed" and failed["error"]["code"] == "broker_unavailable"
    assert rt.app.consumer.held == []


def test_a_second_stop_in_the_same_generation_counts_from_its_own_wake():
    """A first stop near the mark left the worker in its group (it works on after twice the
    session timeout); a second, long one in the same generation is a stop of its own, whose
    refusal has not come back yet when the worker next looks."""
    worker = Worker()
    worker.coordinator = 4
    worker.stopped_for(SESSION_TIMEOUT_S - HEARTBEAT_INTERVAL_S / 2)
    worker.runs_for(0.5)
    worker.stopped_for(30)
    assert worker.watch.out_of_group()


def test_a_dead_letter_after_a_stop_that_cost_the_group_is_not_written(tmp_path):
    """An unreadable message is its new owner's to dead-letter, once."""
    from schemas import ErrorCode

    worker = Worker()
    rt = in_process(tmp_path, worker)

    async def raw_stage(message) -> None:
        worker.stopped_for(25)
        await rt.dead_letter(message, ErrorCode.INVALID_JSON, "the upload is not JSON")

    rt.stage_agent("raw", raw_stage, None, "restyle.stage.raw")
    asyncio.run(rt.deliver("restyle.stage.raw", b"{not json", key="job-1"))

    assert rt.sent(rt.topics.dlq) == []
    assert [m.key for m in rt.app.consumer.held] == [b"job-1"]


def test_a_failure_whose_send_the_stop_timed_out_does_not_stop_the_worker(tmp_path):
    """The broker did not acknowledge the job's failure because the worker was stopped
    meanwhile, not because the broker is gone: the worker lives, and holds the message back."""
    worker = Worker()
    rt = in_process(tmp_path, worker)
    job_events = rt.topic_named(rt.topics.job_events)

    async def send_timed_out_by_a_stop(key=None, value=None, headers=None):
        worker.stopped_for(25)
        timed_out = asyncio.get_running_loop().create_future()
        timed_out.set_exception(TimeoutError("no acknowledgement within 30 s"))
        return timed_out

    job_events.send = send_timed_out_by_a_stop

    async def stage(work: Work) -> None:
        raise StageFailure(ErrorCode.STORAGE_UNAVAILABLE, "the object store did not answer")

    rt.stage_agent("failing", stage, Work, "restyle.stage.failing")
    asyncio.run(rt.deliver("restyle.stage.failing", Work(job_id="job-1"), key="job-1"))

    assert rt.broken is None
    assert [m.key for m in rt.app.consumer.held] == [b"job-1"]


def test_a_stop_while_a_failed_batch_is_dead_lettered_leaves_the_rest_to_the_owners(tmp_path):
    """A batch stage fails (a bug, no stop); the stop comes while its messages are
    dead-lettered: the one dead-lettered stands, the rest is held back, and the worker's agent
    goes on (nothing escapes it)."""
    from tests.inprocess import Event, Message

    worker = Worker()
    rt = in_process(tmp_path, worker)
    dlq = rt.topic_named(rt.topics.dlq)
    send_to_dlq = dlq.send

    async def stopped_while_sending(key=None, value=None, headers=None):
        worker.stopped_for(25)
        return await send_to_dlq(key=key, value=value, headers=headers)

    dlq.send = stopped_while_sending

    async def stage(works: list[Work]) -> None:
        raise KeyError("a bug")

    batch = [Event(Message("restyle.stage.batching", job.encode(),
                           Work(job_id=job).model_dump_json().encode(), offset=offset))
             for offset, job in enumerate(["job-1", "job-2"])]
    asyncio.run(rt._handle_batch("batching", batch, Work, stage))

    assert [m.key for m in rt.sent(rt.topics.dlq)] == [b"job-1"]
    assert [m.key for m in rt.app.consumer.held] == [b"job-2"]
