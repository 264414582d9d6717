"""faust clears every stream's queue each time its flow control resumes, and its table recovery
resumes twice after a rebalance (before and after seeking the stream partitions): messages
handed to the streams between the two were wiped, processed by no one. restyle's flow control
resumes a flowing stream without touching its queue (streams/core/flow_control.py)."""
from __future__ import annotations

import asyncio

import faust
import pytest
from faust.app import base as faust_app
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streams.core.flow_control import ResumeKeepsDeliveredMessages, install_flow_control

TOPIC = "restyle.uploads"


@pytest.fixture(autouse=True)
def keep_faust_flow_control():
    before = faust_app.FlowControlEvent
    yield
    faust_app.FlowControlEvent = before


def upload(app, offset: int):
    message = ConsumerMessage(TOPIC, 0, offset, timestamp=0.0, timestamp_type=0, headers=None,
                              key=b"job", value=b"{}", checksum=None, tp=TP(TOPIC, 0),
                              generation_id=app.consumer_generation_id)
    message.refcount = 1
    return app.create_event(message.key, {"offset": offset}, None, message)


async def processed_after_a_second_resume() -> list[int]:
    """The recovery resumed the flow; offset 1 is handed to the intake's stream; the recovery
    resumes again (its seek done). Then offset 2 comes. Returns what the stream processed."""
    app = faust.App("flow-control-test", broker="kafka://127.0.0.1:9")
    channel = app.channel()
    processed = []

    async def intake():
        async for value in channel.stream():
            processed.append(value["offset"])
            if value["offset"] == 2:
                return

    app.flow_control.resume()  # the recovery's first resume
    running = asyncio.ensure_future(intake())
    while not channel.subscriber_count:
        await asyncio.sleep(0.01)
    for queue in (sub.queue for sub in channel._subscribers):
        queue.put_nowait(upload(app, 1))  # handed out, the stream not yet run
    app.flow_control.resume()  # the recovery's second resume
    await channel.put(upload(app, 2))
    try:
        await asyncio.wait_for(running, 5)
    except asyncio.TimeoutError:
        pass
    return processed


def test_faust_alone_wipes_a_message_handed_out_between_two_resumes():
    faust_app.FlowControlEvent = FlowControlEvent  # mode's, as faust uses it (a worker made
    # earlier in this test session installed restyle's)
    assert asyncio.run(processed_after_a_second_resume()) == [2]  # 1 processed by no one


def test_restyle_keeps_what_was_handed_out_when_a_flowing_stream_is_resumed():
    install_flow_control()
    assert asyncio.run(processed_after_a_second_resume()) == [1, 2]


def test_a_resume_after_a_suspension_still_clears_what_slipped_in():
    flow = ResumeKeepsDeliveredMessages()
    queue = FlowControlQueue(flow_control=flow, clear_on_resume=True)  # as faust makes them
    flow.resume()
    queue.put_nowait("flowing")
    flow.resume()
    assert queue.qsize() == 1  # a resume while flowing keeps it
    flow.suspend()
    flow.resume()
    assert queue.qsize() == 0  # a resume after a suspension clears, as faust's does
