"""How job state moves: the job state machine the tracker folds events through, and the job
board that holds render progress between stores."""
from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from agents.makeover.stages import admit
from schemas.jobs import QueueSpot
from schemas import (
    ErrorCode,
    JobError,
    JobEvent,
    JobEventKind,
    JobState,
    JobStatus,
    MakeoverJob,
    MakeoverResult,
    MakeoverUpload,
    Progress,
)
from streams.core.settings import Settings
from streams.tracking.jobstate import apply_event

# --- the job state machine ---

def _job(job_id="j1") -> MakeoverJob:
    upload = MakeoverUpload(pipeline="room_makeover", image="s3://b/k", style="modern")
    return admit(upload, job_id, Settings().styles, Settings().render_defaults, 1.0,
                 random.Random(1))


def event(kind, **fields) -> JobEvent:
    return JobEvent(job_id="j1", kind=kind, at=fields.pop("at", 2.0), **fields)


def run(events, state=None):
    outputs = []
    for e in events:
        transition = apply_event(state, e)
        state = transition.state or state
        outputs.append(transition)
    return state, outputs


def test_a_job_goes_queued_to_done_and_publishes_one_result():
    result = MakeoverResult(seed=1)
    state, outputs = run([
        event(JobEventKind.SUBMITTED, job=_job(), tenant="t"),
        event(JobEventKind.STATUS, status=JobStatus.ANALYZING),
        event(JobEventKind.STATUS, status=JobStatus.GENERATING),
        event(JobEventKind.PROGRESS, progress=Progress(step=1, total=2)),
        event(JobEventKind.STATUS, status=JobStatus.REANALYZING),
        event(JobEventKind.COMPLETED, result=result),
        event(JobEventKind.COMPLETED, result=result),  # redelivered
    ])
    assert state.status is JobStatus.DONE and state.tenant == "t"
    assert outputs[0].start is not None
    assert [o.result is not None for o in outputs] == [False] * 5 + [True, False]


def test_a_repeated_submission_does_not_start_a_running_job_again():
    state, outputs = run([event(JobEventKind.SUBMITTED, job=_job()),
                          event(JobEventKind.STATUS, status=JobStatus.ANALYZING),
                          event(JobEventKind.SUBMITTED, job=_job())])
    assert outputs[2].start is None and state.status is JobStatus.ANALYZING


def test_a_replayed_submission_of_a_queued_job_is_forwarded_again():
    _, outputs = run([event(JobEventKind.SUBMITTED, job=_job()),
                      event(JobEventKind.SUBMITTED, job=_job())])
    assert outputs[1].start is not None and outputs[1].state is None


def test_status_never_moves_backwards_and_terminal_is_final():
    error = JobError(code=ErrorCode.MODEL_ERROR, message="out of memory")
    state, outputs = run([event(JobEventKind.SUBMITTED, job=_job()),
                          event(JobEventKind.STATUS, status=JobStatus.GENERATING),
                          event(JobEventKind.STATUS, status=JobStatus.ANALYZING),
                          event(JobEventKind.FAILED, error=error),
                          event(JobEventKind.COMPLETED, result=MakeoverResult()),
                          event(JobEventKind.STATUS, status=JobStatus.REANALYZING)])
    assert state.status is JobStatus.FAILED and state.error == error
    assert outputs[2].state is None
    assert outputs[3].result.status == "failed" and outputs[3].result.error == error
    assert all(o.state is None for o in outputs[4:])


def test_a_job_handed_back_by_a_worker_waits_for_the_gpu_again_then_goes_on():
    spot = QueueSpot(topic="restyle.render-requests", partition=1, offset=7)
    state, outputs = run([
        event(JobEventKind.SUBMITTED, job=_job()),
        event(JobEventKind.STATUS, status=JobStatus.QUEUED_FOR_GPU, queue=spot),
        event(JobEventKind.STATUS, status=JobStatus.GENERATING),
        event(JobEventKind.PROGRESS, progress=Progress(step=3, total=30)),
        event(JobEventKind.REQUEUED, queue=spot, at=9.0),  # its worker shut down
    ])
    assert (state.status, state.progress, state.queue, state.updated_at) == \
        (JobStatus.QUEUED_FOR_GPU, None, spot, 9.0)
    state, outputs = run([event(JobEventKind.STATUS, status=JobStatus.GENERATING),
                          event(JobEventKind.COMPLETED, result=MakeoverResult())], state)
    assert state.status is JobStatus.DONE and state.queue is None
    # Only work in progress goes back to the queue.
    analyzing = run([event(JobEventKind.SUBMITTED, job=_job()),
                     event(JobEventKind.STATUS, status=JobStatus.ANALYZING)])[0]
    assert apply_event(analyzing, event(JobEventKind.REQUEUED)).state is None


def test_a_job_whose_worker_died_waits_again_unless_it_moved_since_the_takeover():
    """The next owner of a dead worker's requests says its jobs wait again, as of when it took
    them over: a job still showing the dead worker's render waits; one the new owner has
    started meanwhile (its word arrived late) goes on rendering."""
    spot = QueueSpot(topic="restyle.render-requests", partition=0, offset=3)
    rendering = run([event(JobEventKind.SUBMITTED, job=_job(), at=1.0),
                     event(JobEventKind.STATUS, status=JobStatus.GENERATING, at=2.0),
                     event(JobEventKind.PROGRESS, progress=Progress(step=4, total=20),
                           at=3.0)])[0]  # ... and then its worker was killed
    taken_over = apply_event(rendering, event(JobEventKind.REQUEUED, queue=spot, at=15.0))
    assert (taken_over.state.status, taken_over.state.queue, taken_over.state.progress) == \
        (JobStatus.QUEUED_FOR_GPU, spot, None)

    restarted = run([event(JobEventKind.STATUS, status=JobStatus.GENERATING, at=16.0)],
                    taken_over.state)[0]
    assert restarted.status is JobStatus.GENERATING  # the new owner renders it: it says so
    started_first = run([event(JobEventKind.STATUS, status=JobStatus.QUEUED_FOR_GPU, at=1.5),
                         event(JobEventKind.STATUS, status=JobStatus.GENERATING, at=16.0)],
                        run([event(JobEventKind.SUBMITTED, job=_job(), at=1.0)])[0])[0]
    assert apply_event(started_first, event(JobEventKind.REQUEUED, queue=spot,
                                            at=15.0)).state is None
    # ... and so is one the new owner started before the dead worker's render was forgotten
    # (a `generating` over a `generating`).
    restarted_over = run([event(JobEventKind.STATUS, status=JobStatus.GENERATING, at=16.0)],
                         rendering)[0]
    assert restarted_over.updated_at == 16.0
    assert apply_event(restarted_over, event(JobEventKind.REQUEUED, queue=spot,
                                             at=15.0)).state is None


def test_a_rejected_upload_fails_a_new_job_but_never_a_known_one():
    error = JobError(code=ErrorCode.UNKNOWN_STYLE, message="unknown style")
    fresh = apply_event(None, event(JobEventKind.REJECTED, error=error))
    assert fresh.state.status is JobStatus.FAILED and fresh.result.error == error
    running = JobState(job_id="j1", status=JobStatus.GENERATING, created_at=1, updated_at=1)
    assert apply_event(running, event(JobEventKind.REJECTED, error=error)).state is None


def test_a_running_job_is_cancelled_once_with_who_asked():
    state, outputs = run([event(JobEventKind.SUBMITTED, job=_job()),
                          event(JobEventKind.STATUS, status=JobStatus.GENERATING),
                          event(JobEventKind.CANCELLED, by="tenant acme (api-key k1)"),
                          event(JobEventKind.CANCELLED, by="again"),
                          event(JobEventKind.COMPLETED, result=MakeoverResult())])
    assert state.status is JobStatus.CANCELLED
    assert state.error.code is ErrorCode.CANCELLED
    assert state.error.message == "cancelled by tenant acme (api-key k1)"
    results = [o.result for o in outputs if o.result is not None]
    assert len(results) == 1 and results[0].status == "cancelled"  # one result, says so


def test_a_cancel_before_the_submission_keeps_the_job_from_ever_starting():
    state, outputs = run([event(JobEventKind.CANCELLED),
                          event(JobEventKind.SUBMITTED, job=_job())])
    assert state.status is JobStatus.CANCELLED
    assert state.error.message == "cancelled by an upstream system"
    assert outputs[1].start is None and outputs[1].state is None


def test_a_finished_job_or_another_tenants_is_not_cancelled():
    done, _ = run([event(JobEventKind.SUBMITTED, job=_job()),
                   event(JobEventKind.COMPLETED, result=MakeoverResult()),
                   event(JobEventKind.CANCELLED)])
    assert done.status is JobStatus.DONE
    theirs, outputs = run([event(JobEventKind.SUBMITTED, job=_job(), tenant="acme"),
                           event(JobEventKind.CANCELLED, tenant="globex")])
    assert theirs.status is JobStatus.QUEUED and outputs[1].state is None


def test_a_job_that_stops_moving_is_stalled_and_a_finished_one_never_is():
    from schemas import JobState, JobStatus
    from streams.tracking.jobstate import stalled

    running = JobState(job_id="j", status=JobStatus.GENERATING, created_at=0.0, updated_at=100.0)
    assert not stalled(running, now=150.0, timeout_s=60)
    assert stalled(running, now=161.0, timeout_s=60)
    done = running.model_copy(update={"status": JobStatus.DONE})
    assert not stalled(done, now=10_000.0, timeout_s=60)


# --- the job board: progress ticks between stores ---

class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed(board, *events):
    for e in events:
        board.keep(board.step(e))


def stored_state(table) -> JobState:
    return JobState.model_validate_json(table[b"j1"])


def test_progress_ticks_within_the_store_interval_are_shown_but_not_stored():
    from streams.tracking.jobboard import JobBoard

    table, clock = {}, Clock()
    board = JobBoard(table, progress_store_interval_s=1.0, clock=clock)
    feed(board, event(JobEventKind.SUBMITTED, job=_job(), at=10.0),
         event(JobEventKind.STATUS, status=JobStatus.GENERATING, at=10.0))
    clock.now += 0.4
    feed(board, event(JobEventKind.PROGRESS, progress=Progress(step=1, total=30), at=10.2),
         event(JobEventKind.PROGRESS, progress=Progress(step=2, total=30), at=10.4))
    assert stored_state(table).progress is None  # the table still says "generating", no step
    assert board.get("j1").progress == Progress(step=2, total=30)
    assert board.get("j1").updated_at == 10.4  # the sweeper sees the job moving

    clock.now += 0.7  # a second after the last store, by this process's clock
    feed(board, event(JobEventKind.PROGRESS, progress=Progress(step=3, total=30), at=10.6))
    assert stored_state(table).progress == Progress(step=3, total=30)

    feed(board, event(JobEventKind.PROGRESS, progress=Progress(step=4, total=30), at=10.8),
         event(JobEventKind.STATUS, status=JobStatus.REANALYZING, at=10.9))
    assert stored_state(table).status is JobStatus.REANALYZING
    assert board.get("j1") == stored_state(table)


def test_every_tick_is_stored_with_a_zero_interval():
    from streams.tracking.jobboard import JobBoard

    table = {}
    board = JobBoard(table, progress_store_interval_s=0, clock=Clock())
    feed(board, event(JobEventKind.SUBMITTED, job=_job(), at=10.0),
         event(JobEventKind.PROGRESS, progress=Progress(step=1, total=2), at=10.1))
    assert stored_state(table).status is JobStatus.GENERATING
    assert stored_state(table).progress.step == 1


def test_a_worker_that_did_not_store_the_job_stores_its_first_tick():
    """After a restart or a rebalance this process has no store of its own to time from."""
    from streams.tracking.jobboard import JobBoard

    table, clock = {}, Clock()
    feed(JobBoard(table, 5.0, clock=clock),
         event(JobEventKind.SUBMITTED, job=_job(), at=10.0),
         event(JobEventKind.STATUS, status=JobStatus.GENERATING, at=10.0))
    new_owner = JobBoard(table, 5.0, clock=clock)
    feed(new_owner, event(JobEventKind.PROGRESS, progress=Progress(step=1, total=2), at=10.5))
    assert stored_state(table).progress.step == 1


def test_a_held_tick_never_hides_a_state_stored_elsewhere():
    """While another worker owned the partition the job finished; back here, the tick this
    process held is stale and the table wins."""
    from streams.tracking.jobboard import JobBoard

    table, clock = {}, Clock()
    board = JobBoard(table, progress_store_interval_s=5.0, clock=clock)
    feed(board, event(JobEventKind.SUBMITTED, job=_job(), at=10.0),
         event(JobEventKind.STATUS, status=JobStatus.GENERATING, at=10.0),
         event(JobEventKind.PROGRESS, progress=Progress(step=1, total=2), at=10.5))
    finished = stored_state(table).model_copy(
        update={"status": JobStatus.DONE, "updated_at": 12.0})
    table[b"j1"] = finished.model_dump_json().encode()
    assert board.get("j1") == finished
    feed(board, event(JobEventKind.PROGRESS, progress=Progress(step=2, total=2), at=12.5))
    assert board.get("j1") == finished  # terminal is final


def test_revoked_partitions_forget_what_was_held():
    from streams.tracking.jobboard import JobBoard

    table, clock = {}, Clock()
    board = JobBoard(table, progress_store_interval_s=5.0, clock=clock)
    feed(board, event(JobEventKind.SUBMITTED, job=_job(), at=10.0),
         event(JobEventKind.STATUS, status=JobStatus.GENERATING, at=10.0),
         event(JobEventKind.PROGRESS, progress=Progress(step=1, total=2), at=10.5))
    board.forget()
    assert board.get("j1") == stored_state(table)  # no step: the table's state


def test_a_watcher_wakes_at_each_change_of_its_job_held_ticks_included():
    """What an SSE stream sleeps on: every change wakes it, stored or only held; a change of
    another job does not."""
    from streams.tracking.jobboard import JobBoard

    board = JobBoard({}, progress_store_interval_s=5.0, clock=Clock())
    watching = board.changed("j1")
    feed(board, event(JobEventKind.SUBMITTED, job=_job(), at=10.0))
    assert watching.is_set()
    watching = board.changed("j1")
    assert not watching.is_set()  # a new one for the next change
    feed(board, event(JobEventKind.STATUS, status=JobStatus.GENERATING, at=10.1))
    watching = board.changed("j1")
    feed(board, event(JobEventKind.PROGRESS, progress=Progress(step=1, total=30), at=10.2))
    assert watching.is_set()  # a held tick, not stored: still a change users see
    other = board.changed("j2")
    watching = board.changed("j1")
    feed(board, event(JobEventKind.PROGRESS, progress=Progress(step=2, total=30), at=10.3))
    assert watching.is_set() and not other.is_set()
    board.forget()  # partitions revoked: watchers read the table again
    assert other.is_set()


class StoredBytes(dict):
    """A table as RocksDB serves it: each read returns new bytes, equal to what was written."""

    def get(self, key, default=None):
        value = super().get(key, default)
        return bytes(bytearray(value)) if value is not None else None


def counting_decodes(monkeypatch) -> list:
    decoded = []
    validate = JobState.model_validate_json

    def counted(raw, *args, **kwargs):
        decoded.append(raw)
        return validate(raw, *args, **kwargs)

    monkeypatch.setattr(JobState, "model_validate_json", counted)
    return decoded


def test_a_polled_state_is_decoded_once_and_a_table_change_is_read_at_once(monkeypatch):
    """GET /jobs/{id} is polled: while the table holds the same bytes, the state decoded from
    them is served again. Bytes written behind the board's back (a changelog recovery, another
    owner of the partition) are read at the next request, and a state is never changed in
    place (it is shared)."""
    from streams.tracking.jobboard import JobBoard

    submitted = apply_event(None, event(JobEventKind.SUBMITTED, job=_job(), at=10.0)).state
    table = StoredBytes({b"j1": submitted.model_dump_json().encode()})
    board = JobBoard(table, progress_store_interval_s=5.0, clock=Clock())
    decoded = counting_decodes(monkeypatch)
    first = board.get("j1")
    assert first == submitted and len(decoded) == 1
    assert board.get("j1") is first and len(decoded) == 1  # not decoded again
    with pytest.raises(ValidationError):
        first.status = JobStatus.DONE

    finished = first.model_copy(update={"status": JobStatus.DONE, "updated_at": 12.0})
    table[b"j1"] = finished.model_dump_json().encode()
    assert board.get("j1") == finished and len(decoded) == 2
    del table[b"j1"]
    assert board.get("j1") is None


def test_the_board_keeps_the_newest_decoded_states_and_what_it_wrote(monkeypatch):
    from streams.tracking import jobboard
    from streams.tracking.jobboard import JobBoard

    monkeypatch.setattr(jobboard, "DECODED_STATES_KEPT", 2)
    table = StoredBytes()
    board = JobBoard(table, progress_store_interval_s=5.0, clock=Clock())
    for job_id in ("a", "b", "c"):
        board.keep(board.step(JobEvent(job_id=job_id, kind=JobEventKind.SUBMITTED, at=1.0,
                                       job=_job(job_id))))
    decoded = counting_decodes(monkeypatch)
    board.get("b")
    board.get("c")
    assert decoded == []  # written here: known without a decode
    board.get("a")
    assert len(decoded) == 1  # the oldest was let go
