"""Whose turn it is at the model: one call at a time, interactive work first.

A GPU worker holds requests from two lanes (two topics): interactive ones (a makeover, an
avatar, a single conditioned image: someone is waiting) and batch ones (a background batch's
images). When the model frees up, the oldest interactive request waiting gets it; a batch
request gets it when no interactive one waits, or after `interactive_burst` interactive turns
in a row, so a steady interactive load never starves a batch. Within a lane, arrival order.
"""
from __future__ import annotations

import asyncio
from collections import deque
from contextlib import asynccontextmanager

INTERACTIVE, BATCH = "interactive", "batch"
LANES = (INTERACTIVE, BATCH)


class ModelTurns:
    def __init__(self, interactive_burst: int = 4):
        self.interactive_burst = interactive_burst
        self._busy = False
        self._waiting: dict[str, deque[asyncio.Future]] = {lane: deque() for lane in LANES}
        self._interactive_in_a_row = 0
        self.turns = {lane: 0 for lane in LANES}

    @asynccontextmanager
    async def turn(self, lane: str):
        """Hold the model for one call of `lane`'s."""
        if lane not in self._waiting:
            raise ValueError(f"unknown lane {lane!r}; lanes: {', '.join(LANES)}")
        if self._busy or self._pending():
            granted = asyncio.get_running_loop().create_future()
            self._waiting[lane].append(granted)
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._hand_on()  # given the turn and cancelled before taking it
                else:
                    self._discard(lane, granted)
                raise
        else:
            self._busy = True
        self._taken(lane)
        try:
            yield
        finally:
            self._hand_on()

    def _taken(self, lane: str) -> None:
        self.turns[lane] += 1
        self._interactive_in_a_row = self._interactive_in_a_row + 1 if lane == INTERACTIVE \
            else 0

    def _hand_on(self) -> None:
        """The model is free: give it to the next waiter, or mark it idle."""
        lane = self._next_lane()
        if lane is None:
            self._busy = False
            return
        self._waiting[lane].popleft().set_result(None)  # the turn passes; still busy

    def _next_lane(self) -> str | None:
        for lane in LANES:  # drop waiters that were cancelled while they waited
            while self._waiting[lane] and self._waiting[lane][0].done():
                self._waiting[lane].popleft()
        interactive, batch = self._waiting[INTERACTIVE], self._waiting[BATCH]
        if interactive and (not batch or
                            self._interactive_in_a_row < self.interactive_burst):
            return INTERACTIVE
        return BATCH if batch else None

    def _pending(self) -> bool:
        return any(f for lane in LANES for f in self._waiting[lane] if not f.done())

    def _discard(self, lane: str, waiter: asyncio.Future) -> None:
        try:
            self._waiting[lane].remove(waiter)
        except ValueError:
            pass
