"""Flow control whose resume clears the streams' queues only when the flow was suspended.

faust's streams read from queues that its flow control clears on every resume (mode's
FlowControlEvent.resume, for queues made with clear_on_resume, as faust makes every channel's).
A suspension (a rebalance) empties them anyway; the clear on resume is for what slipped in
meanwhile. But faust's table recovery resumes twice after a rebalance with nothing to restore:
once before it seeks the stream partitions to their committed offsets, once after. Messages
fetched and handed to the streams between the two were wiped from their queues, delivered to
no stream, never acknowledged, and restyle's consumer, having handed them already, did not
hand them again: a traced run of the pause e2e case lost an upload and a job event so (issue
15). Here a resume of a flow that is not suspended changes nothing.
"""
from __future__ import annotations

from faust.app import base as faust_app
from mode.utils.queues import FlowControlEvent


class ResumeKeepsDeliveredMessages(FlowControlEvent):
    def resume(self) -> None:
        if self.is_active():
            return  # flowing already: the queues hold messages handed out since, not stale ones
        super().resume()


def install_flow_control() -> None:
    """Every faust app made after this in the process gets this flow control (App.flow_control
    is made on first use, from faust.app.base's FlowControlEvent)."""
    faust_app.FlowControlEvent = ResumeKeepsDeliveredMessages
