"""Batched renders: requests that can share a pipeline call wait for the model together.

A GPU does several images in one call for little more than the time of one, so requests with
the same batch key (same model and adapter, task, size, steps, guidance; see
gpu_agent/worker.py) that wait for the model at the same moment are rendered in one call, up
to `max_batch`. The first of them leads: it waits for the model's turn (gpu_agent/turns.py)
and the others join it meanwhile, so under a queue batches form with no added wait. Given the
turn, a leader still short of company waits at most what is left of `max_wait_s` since it
arrived (0 by default: never). Each member keeps its own outcome: one that fails or is
cancelled does not fail the others.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

from gpu_agent.turns import ModelTurns

M = TypeVar("M")
R = TypeVar("R")


class LeaderGone(Exception):
    """The leader of a group stopped before its call (its task was cancelled): its members
    queue again."""


@dataclass
class _Group(Generic[M]):
    members: list = field(default_factory=list)
    # The members' outcomes but the leader's (the leader returns its own).
    outcomes: list[asyncio.Future] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)


class RenderBatches(Generic[M, R]):
    def __init__(self, turns: ModelTurns, max_batch: int = 1, max_wait_s: float = 0.0):
        self.turns = turns
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._open: dict[tuple[str, Hashable], _Group] = {}

    async def run(self, lane: str, key: Hashable, member: M,
                  call: Callable[[list[M]], Awaitable[list[R | BaseException]]]) -> R:
        """member's outcome from call(members): one call for every member of its group,
        made on the model's turn; call returns an outcome (or an exception) per member."""
        while True:
            group = self._open.get((lane, key))
            if group is None:
                return await self._lead(lane, key, member, call)
            outcome = asyncio.get_running_loop().create_future()
            group.members.append(member)
            group.outcomes.append(outcome)
            if len(group.members) >= self.max_batch:
                self._close(lane, key, group)
            try:
                return await outcome
            except LeaderGone:
                continue

    async def _lead(self, lane, key, member, call) -> R:
        group = _Group(members=[member])
        if self.max_batch > 1:
            self._open[(lane, key)] = group
        arrived = time.monotonic()
        try:
            async with self.turns.turn(lane):
                left = self.max_wait_s - (time.monotonic() - arrived)
                if left > 0 and len(group.members) < self.max_batch:
                    try:
                        await asyncio.wait_for(group.full.wait(), left)
                    except asyncio.TimeoutError:
                        pass
                self._close(lane, key, group)
                outcomes = await call(group.members)
        except BaseException:
            self._close(lane, key, group)
            for outcome in group.outcomes:  # not rendered: they queue again
                if not outcome.done():
                    outcome.set_exception(LeaderGone())
            raise
        for future, outcome in zip(group.outcomes, outcomes[1:]):
            if future.done():  # its task was cancelled while it waited
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        if isinstance(outcomes[0], BaseException):
            raise outcomes[0]
        return outcomes[0]

    def _close(self, lane: str, key: Hashable, group: _Group) -> None:
        """No one joins group any more."""
        if self._open.get((lane, key)) is group:
            del self._open[(lane, key)]
        group.full.set()
