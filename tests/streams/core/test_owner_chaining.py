"""A table owner chained at a job's ends (the job tracker): the stage that sends it an event
calls it in-process, and the event is written to the owner's topic all the same. Whatever
happens, the owner handles the event once: in-process when that call succeeds, else from its
topic, under its own error policy (tests/inprocess.py stands in for the broker; the runtime's
send, chain and error policy are the real ones)."""
from __future__ import annotations

import asyncio
import json

import pytest

from schemas import ErrorCode, JobEvent, JobEventKind, StageFailure
from streams.core.runtime import message_in_hand
from streams.core.settings import Settings
from tests.inprocess import InProcessRuntime

MARK = ("restyle-handled-in-process", b"1")


class Owner:
    """A stand-in tracker: notes each event it handles, and from which topic it read it."""

    def __init__(self, runtime: InProcessRuntime, fails_in_process: bool = False):
        self.runtime, self.fails_in_process = runtime, fails_in_process
        self.handled: list[tuple[str, str]] = []

    async def track(self, event: JobEvent) -> None:
        read_from = message_in_hand().spot[1]
        if self.fails_in_process and read_from != self.runtime.topics.job_events:
            raise RuntimeError("the jobs table is unreachable")
        self.handled.append((event.kind.value, read_from))


@pytest.fixture
def runtime(tmp_path) -> InProcessRuntime:
    return InProcessRuntime(Settings(state_dir=tmp_path, storage_base=(tmp_path / "s").as_uri(),
                                     retry_first_wait_s=0.01), [])


def wire(runtime: InProcessRuntime, owner: Owner, fails_after_sending: bool = False) -> None:
    async def start(message) -> None:
        job_id = message.key.decode()
        await runtime.job_event(job_id, JobEventKind.SUBMITTED, to_tracker=True)
        if fails_after_sending:
            raise StageFailure(ErrorCode.STORAGE_UNAVAILABLE, "storage unreachable after the send")

    runtime.stage_agent("tracker", owner.track, JobEvent, topic=runtime.topics.job_events,
                        fail_jobs=False, follows_cancellations=False, chained=True,
                        owns_table=True)
    runtime.stage_agent("starter", start, None, topic=runtime.topics.uploads, fail_jobs=False)


def upload(runtime: InProcessRuntime, job_id: str) -> None:
    asyncio.run(runtime.deliver(runtime.topics.uploads, b"{}", job_id))


def test_an_event_handled_in_process_is_written_and_passed_by_on_its_topic(runtime):
    owner = Owner(runtime)
    wire(runtime, owner)
    upload(runtime, "job-1")

    assert owner.handled == [("submitted", runtime.topics.uploads)]  # once, without a hop
    (written,) = runtime.sent(runtime.topics.job_events)
    assert MARK in written.headers and json.loads(written.value)["kind"] == "submitted"
    assert runtime.sent(runtime.topics.dlq) == []


async def until(condition, timeout_s: float = 5.0) -> None:
    async def polled():
        while not condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(polled(), timeout_s)


async def upload_while_job_events_are_unanswered(runtime: InProcessRuntime, job_id: str):
    """Deliver an upload while the broker holds back its answers to writes on job-events:
    the delivery under way, and the held acknowledgement of the upload's event, once written."""
    held = runtime.acks_held.setdefault(runtime.topics.job_events, [])
    delivering = asyncio.ensure_future(runtime.deliver(runtime.topics.uploads, b"{}", job_id))
    await until(lambda: held)
    return delivering, held[0]


def test_the_owner_takes_an_event_in_process_while_the_broker_acknowledges_its_write(runtime):
    """The sender's acknowledgements do not hold the chain back: they are waited for once it
    has run, before the upload counts as done."""
    owner = Owner(runtime)
    wire(runtime, owner)

    async def scenario():
        delivering, acknowledgement = await upload_while_job_events_are_unanswered(
            runtime, "job-5")
        await until(lambda: owner.handled)  # (the chain waited for the broker: never)
        assert owner.handled == [("submitted", runtime.topics.uploads)]
        await asyncio.sleep(0.05)
        assert not delivering.done()  # the upload is not done before its write is on the broker
        acknowledgement.set_result(None)
        await asyncio.wait_for(delivering, 5)

    asyncio.run(scenario())
    assert owner.handled == [("submitted", runtime.topics.uploads)]  # not again from the topic
    assert runtime.sent(runtime.topics.dlq) == []


def test_a_write_the_broker_never_acknowledged_fails_the_stage_that_sent_it(runtime):
    """The owner took the event in-process, but the broker refused its record: the sender's
    failure is said as it would have been had the chain waited (here its upload is
    dead-lettered with the cause)."""
    from aiokafka.errors import KafkaTimeoutError

    owner = Owner(runtime)
    wire(runtime, owner)

    async def scenario():
        delivering, acknowledgement = await upload_while_job_events_are_unanswered(
            runtime, "job-6")
        acknowledgement.set_exception(KafkaTimeoutError("no answer within the request timeout"))
        await asyncio.wait_for(delivering, 5)

    asyncio.run(scenario())
    (letter,) = runtime.sent(runtime.topics.dlq)
    assert letter.value == b"{}"
    assert dict(letter.headers)["restyle-dlq-code"] == ErrorCode.BROKER_UNAVAILABLE.value.encode()
    assert owner.handled == [("submitted", runtime.topics.uploads)]


def test_an_event_whose_sender_failed_after_the_write_is_handled_from_its_topic(runtime):
    owner = Owner(runtime)
    wire(runtime, owner, fails_after_sending=True)
    upload(runtime, "job-2")

    # The sender's chain was dropped; the record it wrote is the owner's all the same.
    assert owner.handled == [("submitted", runtime.topics.job_events)]
    (letter,) = runtime.sent(runtime.topics.dlq)  # the sender's own failure, as split
    assert letter.value == b"{}"


def test_an_event_the_owner_failed_in_process_is_handled_from_its_topic(runtime):
    owner = Owner(runtime, fails_in_process=True)
    wire(runtime, owner)
    upload(runtime, "job-3")

    assert owner.handled == [("submitted", runtime.topics.job_events)]
    assert runtime.sent(runtime.topics.dlq) == []  # the upload is not dead-lettered for it
    assert len(runtime._owner_claims) == 0
