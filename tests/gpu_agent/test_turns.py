"""Turns at the model: one call at a time; interactive requests go before batch ones that
waited longer; a batch request is never starved; a request cancelled while it waits (a
cancelled job, a worker handing back its work) never blocks the ones behind it."""
from __future__ import annotations

import asyncio

from gpu_agent.turns import BATCH, INTERACTIVE, ModelTurns


async def served_in_order(turns: ModelTurns, arrivals: list[tuple[str, str]],
                          hold_s: float = 0.01) -> list[str]:
    """Each (name, lane) asks for a turn in this order while the first holds the model."""
    order: list[str] = []

    async def call(name: str, lane: str) -> None:
        async with turns.turn(lane):
            order.append(name)
            await asyncio.sleep(hold_s)

    tasks = []
    for name, lane in arrivals:
        tasks.append(asyncio.create_task(call(name, lane)))
        await asyncio.sleep(0)  # arrives in this order
    await asyncio.gather(*tasks)
    return order


def test_an_interactive_request_goes_before_the_batch_waiting_ahead_of_it():
    arrivals = [("b1", BATCH), ("b2", BATCH), ("b3", BATCH), ("makeover", INTERACTIVE),
                ("b4", BATCH)]
    order = asyncio.run(served_in_order(ModelTurns(), arrivals))
    assert order == ["b1", "makeover", "b2", "b3", "b4"]  # after the render under way


def test_a_batch_request_waits_behind_at_most_a_burst_of_interactive_ones():
    arrivals = [("first", INTERACTIVE), ("b1", BATCH)] + \
        [(f"i{n}", INTERACTIVE) for n in range(6)]
    order = asyncio.run(served_in_order(ModelTurns(interactive_burst=3), arrivals))
    assert order == ["first", "i0", "i1", "b1", "i2", "i3", "i4", "i5"]


def test_a_request_cancelled_while_it_waits_never_blocks_the_next():
    async def scenario() -> list[str]:
        turns = ModelTurns()
        order: list[str] = []

        async def call(name: str, lane: str, hold_s: float = 0.02) -> None:
            async with turns.turn(lane):
                order.append(name)
                await asyncio.sleep(hold_s)

        running = asyncio.create_task(call("running", BATCH))
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(call("cancelled", INTERACTIVE))
        later = asyncio.create_task(call("later", BATCH))
        await asyncio.sleep(0.005)
        cancelled.cancel()
        await asyncio.gather(running, later, cancelled, return_exceptions=True)
        # Given the turn and cancelled before it took it: the turn passes on too.
        waiter = None

        async def cancels_the_next_as_it_ends() -> None:
            async with turns.turn(INTERACTIVE):
                order.append("x")
                await asyncio.sleep(0.02)
            waiter.cancel()  # y was granted the turn as x left, and is cancelled before it runs

        x = asyncio.create_task(cancels_the_next_as_it_ends())
        await asyncio.sleep(0)
        waiter = asyncio.create_task(call("y", INTERACTIVE))
        await asyncio.sleep(0)
        last = asyncio.create_task(call("z", BATCH))
        await asyncio.wait_for(asyncio.gather(x, last, waiter, return_exceptions=True), 2)
        return order

    order = asyncio.run(scenario())
    assert order == ["running", "later", "x", "z"]
