"""The tracker: folds restyle.job-events into the jobs table, starts admitted jobs, publishes
each finished job's result once, and reports a batch's images to the batch tracker."""
from __future__ import annotations

import logging
import time

from schemas import ErrorCode, JobError, JobEvent, JobStatus, ResultEvent, StageFailure
from schemas.jobs import Cancellation, TenantActivity
from schemas.background import BatchEvent, BatchEventKind, ImageOutcome
from streams.core.copartition import current_message
from streams.core.kafka import client_options
from streams.core.keyed_locks import KeyedLocks
from streams.core.metrics import JOB_SECONDS, JOBS_FINISHED
from streams.core import tracing
from streams.core.runtime import Runtime
from streams.tracking.jobboard import JobBoard
from streams.tracking.jobstate import stalled
from streams.tracking.fencing import Fenced, TransactionalResults
from streams.tracking.published import PublishedResults
from streams.tracking.tables import Tables

log = logging.getLogger("restyle")

FULL_SCAN_EVERY = 10  # sweeps


def image_outcome(result: ResultEvent) -> ImageOutcome:
    """A finished job as a line of its batch's report."""
    found = result.result
    return ImageOutcome(
        job_id=result.job_id, status=result.status,
        error=result.error.code.value if result.error else None,
        cause=result.error.message if result.error else None,
        outputs=[image.uri for image in found.images] if found else [],
        seed=found.seed if found else None,
        timings_ms=found.timings_ms if found else {})


async def stop_work(rt: Runtime, job_id: str, by: str, at: float) -> None:
    """Every worker hears that the job ended for good: a stage does not start it, a render or
    a training stops at its next step."""
    await rt.send(rt.topics.cancellations, job_id, Cancellation(job_id=job_id, by=by, at=at),
                  acknowledged=True)


async def give_up_stalled(rt: Runtime, board: JobBoard, active: set[str], now: float) -> None:
    """Fail `timeout` each job of active that has made no progress for its timeout (and drop
    the ones that ended from active)."""
    settings = rt.settings
    for job_id in list(active):
        state = board.get(job_id)
        if state is None or state.status.terminal:
            active.discard(job_id)
            continue
        queued = state.status is JobStatus.QUEUED_FOR_GPU
        timeout = settings.timeout_for(state.pipeline, queued)
        if timeout > 0 and stalled(state, now, timeout):
            # Not after a stop past the session timeout (pauses.py), even one during the
            # sweep: every job of the stale table looks stalled by the length of the stop,
            # though its new owner runs it.
            if rt.pauses.out_of_group():
                return
            active.discard(job_id)
            setting = "RESTYLE_GPU_QUEUE_TIMEOUT_S" if queued else \
                "RESTYLE_JOB_TIMEOUTS" if state.pipeline in settings.job_timeouts \
                else "RESTYLE_JOB_TIMEOUT_S"
            await rt.fail(state.job_id, JobError(
                code=ErrorCode.TIMEOUT, message=f"no progress for {timeout:.0f}s while "
                f"{state.status.value}; the job was given up ({setting})"), state.tenant)
            # Given up is final: if its work turns up after all (a slow GPU queue), no
            # worker renders it.
            await stop_work(rt, job_id, "the timeout sweeper", now)


def register(rt: Runtime, tables: Tables, first_stages: dict[str, str]) -> None:
    """first_stages: pipeline name -> the topic its admitted jobs start on."""
    app, board, settings = rt.app, tables.board, rt.settings
    # Fencing (RESTYLE_RESULT_TRANSACTIONS): a partition's transactional id is registered
    # before its results are read, and only committed results count.
    transactional = TransactionalResults(
        client_options(settings), rt.topics.results, settings.app_id,
        generation=lambda: app.consumer_generation_id,
        in_group=lambda: not rt.pauses.out_of_group(),
        reclaim_after_s=2 * settings.session_timeout_s) \
        if settings.result_transactions else None
    published = PublishedResults(
        client_options(settings), rt.topics.results, settings.clock_skew_s,
        before_read=transactional.ready if transactional else None,
        isolation_level="read_committed" if transactional else "read_uncommitted")

    async def published_before(result: ResultEvent, message) -> bool:
        """Whether message was handled before, by a tracker that published this result and
        stopped before it stored the job's end."""
        if message is None or not published.may_be_replayed(message.timestamp):
            return False
        # A replayed job-events record ends the job as before (the same finished_at); the
        # replayed input of a stage the tracker is chained from runs that stage again, which
        # ends the job anew: any result of the job counts then (a job id has one result).
        # (Fenced here, from the read's before_read: another tracker has the partition now.)
        same_end = message.topic == rt.topics.job_events
        found = await published.contains(message.partition, result.job_id,
                                         result.finished_at if same_end else None,
                                         message.timestamp)
        if found:
            log.warning("job %s: its result was already published (the tracker that handled "
                        "this event before stopped before it stored the job's end); it is not "
                        "published again", result.job_id)
        return bool(found)

    async def publish(result: ResultEvent, message) -> None:
        """The job's result, acknowledged by the broker. Not acknowledged is not always not
        written (a timeout after the write, a connection dropped before the answer): one found
        on its partition counts as published, rather than the event being dead-lettered and the
        job failed later by the sweeper with a second, contradictory result."""
        rt.pauses.ensure_in_group()  # (also after published_before: a stop may come during it)
        sent_at = time.time()
        try:
            if transactional is not None and message is not None:
                await transactional.publish(message.partition, result.job_id.encode(),
                                            result.model_dump_json().encode(),
                                            tracing.outgoing_headers())
            else:
                await rt.send(rt.topics.results, result.job_id, result, acknowledged=True)
        except StageFailure:
            if message is None or not await published.written_after_all(
                    message.partition, result.job_id, result.finished_at, sent_at):
                raise
            log.warning("job %s: the broker did not acknowledge its result, but wrote it; it "
                        "counts as published", result.job_id)

    # The tracker takes a job's events from its topic and, chained, from the stages that start
    # and end the job in this worker: one event of a job at a time, as from one topic.
    one_at_a_time = KeyedLocks()

    async def track(event: JobEvent) -> None:
        async with one_at_a_time.holding(event.job_id):
            await track_event(event)

    async def track_event(event: JobEvent) -> None:
        # A job-events message, or the input of the stage the tracker is chained from (on
        # the partition of the same number: copartition.py), which a crash would replay as it
        # would the event.
        message = current_message()
        if message is not None:
            published.saw(message.partition, message.timestamp)
        step = board.step(event)
        transition = step.transition
        latest = transition.state or step.current  # the job's state after this event
        # Stopped past the session timeout while it handled this event, the tracker sends and
        # stores nothing more for it (rt.send, publish and the table ask first): the
        # partition's new owner handles it, with the state it has (this one's may be stale).
        # OutOfGroup holds the event back (streams/core/pauses.py).
        if transition.result is not None and transition.result.status == "cancelled":
            await stop_work(rt, event.job_id, event.by or "an upstream system", event.at)
        if transition.result is not None:
            # Published (and acknowledged) before the terminal state is stored: a crash in
            # between replays the event, and the replay finds the result published.
            try:
                already = await published_before(transition.result, message)
                if not already:
                    await publish(transition.result, message)
            except Fenced:
                # Another tracker registered the partition's transactional id: this one lost
                # the partition without knowing it (a long pause), or (rarely) a stopped
                # tracker's registration went out late. Nothing is published or stored here,
                # and the event is left uncommitted: it comes again to the partition's owner
                # (fencing.py).
                log.warning("job %s: another tracker has registered partition %d of %s; "
                            "the event is left to the partition's owner", event.job_id,
                            message.partition, message.topic)
                rt.app.consumer.hold_back(message)
                return
            if not already:
                # Counted once per job, with its result (not again for a replay).
                code = transition.result.error.code.value if transition.result.error else ""
                JOBS_FINISHED.labels(transition.result.status, code).inc()
                if latest is not None:
                    JOB_SECONDS.labels(transition.result.pipeline or "unknown",
                                       transition.result.status).observe(
                        max(0.0, transition.result.finished_at - latest.created_at))
            if transition.result.batch_id:  # (the batch tracker ignores a repeated outcome)
                await rt.send(rt.topics.batch_events, transition.result.batch_id, BatchEvent(
                    batch_id=transition.result.batch_id, kind=BatchEventKind.IMAGE,
                    at=time.time(), outcome=image_outcome(transition.result)),
                    acknowledged=True)
        if transition.state is not None:
            board.keep(step)  # (a table write: refused after a stop, as above)
            if not transition.state.status.terminal:
                active.add(event.job_id)
        if transition.start is not None:
            await rt.send(first_stages[transition.start.pipeline], event.job_id,
                          transition.start)
            start = transition.start
            await announce(event.job_id, getattr(start, "tenant", None), active=True,
                           pipeline=start.pipeline, batch_id=getattr(start, "batch_id", None))
        if transition.result is not None:
            result = transition.result
            await announce(event.job_id, result.tenant, active=False, pipeline=result.pipeline,
                           batch_id=result.batch_id, status=result.status,
                           error=result.error, retryable=bool(latest and latest.retryable))

    async def announce(job_id: str, tenant: str | None, active: bool, **shown) -> None:
        """A job of the tenant started or ended (the activity tracker counts its jobs and
        lists its newest; shown: its pipeline, batch and how it ended)."""
        tenant = tenant or settings.default_tenant
        await rt.send(rt.topics.tenant_activity, tenant, TenantActivity(
            tenant=tenant, job_id=job_id, active=active, at=time.time(), **shown))

    # Jobs this worker's tracker saw start and not finish: what the sweeper checks. The table's
    # local partitions are scanned in full now and then, for jobs this process has not seen
    # move (after a restart or a rebalance).
    active: set[str] = set()
    sweeps = 0

    @app.timer(interval=settings.job_sweep_interval_s)
    async def sweep() -> None:
        nonlocal sweeps
        if settings.job_timeout_s <= 0 or app.rebalancing:
            return
        if sweeps % FULL_SCAN_EVERY == 0:
            active.update(board.active_ids())
        sweeps += 1
        await give_up_stalled(rt, board, active, time.time())

    def job_event_partitions(partitions) -> list[int]:
        return [tp.partition for tp in partitions or () if tp.topic == rt.topics.job_events]

    @app.on_partitions_revoked.connect
    async def forget_held_progress(_sender=None, revoked=None, **_kwargs) -> None:
        board.forget()
        published.forget()
        if transactional is not None:
            transactional.drop(job_event_partitions(revoked))

    @app.on_partitions_assigned.connect
    async def forget_published(_sender=None, assigned=None, **_kwargs) -> None:
        published.forget()
        if transactional is not None:  # the previous owners are fenced from now on
            transactional.take(job_event_partitions(assigned))

    # A tracker failure must not feed a `failed` event back into its own topic: the event
    # goes to the DLQ instead.
    # Chained (owns_table): the job's start (intake) and end (its last stage) are tracked
    # in-process where this worker owns the job's partition, without a hop through the topic.
    rt.stage_agent("tracker", track, JobEvent, topic=rt.topics.job_events, fail_jobs=False,
                   follows_cancellations=False, chained=True, owns_table=True)
