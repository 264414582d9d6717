"""Who handles a record a table owner was handed in-process: the worker's in-process call, or
the owner's own agent when it reads the record from its topic.

A chained table owner (the job tracker) is called in-process by the stage that sends it an
event, and the event is written to the owner's topic all the same, marked. Only this process
can know whether its in-process call succeeded: the sending stage's attempt may fail after the
record was written (its chain is then dropped), the call itself may fail, the worker may stop
in between. So the write opens a claim, and the owner's agent, reading a marked record, passes
it by only when a claim of this process says the call handled it. Otherwise (the call failed
or never ran, or this process never sent it: a restart, another worker, a rebuild from the
topic) the agent handles the record as any other, under its own error policy."""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque

# A claim whose record this worker never reads (its partition moved) is forgotten after this.
FORGOTTEN_AFTER_S = 600.0


class Claim:
    def __init__(self, opened_at: float):
        self.opened_at = opened_at
        self.outcome: asyncio.Future = asyncio.get_running_loop().create_future()

    def handled(self) -> None:
        """The in-process call handled it (a refusal before this stands)."""
        if not self.outcome.done():
            self.outcome.set_result(True)

    def refused(self) -> None:
        """Not handled in-process: the owner's agent handles the record when it reads it."""
        if not self.outcome.done():
            self.outcome.set_result(False)


class OwnerClaims:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._open: dict[tuple, deque[Claim]] = defaultdict(deque)

    def open(self, topic: str, key: bytes, value: bytes) -> Claim:
        """A claim on the record written with this key and value, before it is written."""
        self._forget_old()
        claim = Claim(self.clock())
        self._open[(topic, key, value)].append(claim)
        return claim

    async def handled_here(self, topic: str, key: bytes | None, value: bytes | None) -> bool:
        """Whether this process's in-process call handled the record read from topic (waiting
        for the call's outcome if it is still running)."""
        waiting = self._open.get((topic, key, value))
        if not waiting:
            return False
        claim = waiting.popleft()
        if not waiting:
            del self._open[(topic, key, value)]
        return await claim.outcome

    def _forget_old(self) -> None:
        oldest = self.clock() - FORGOTTEN_AFTER_S
        for identity in [i for i, claims in self._open.items()
                         if claims[0].opened_at < oldest and claims[0].outcome.done()]:
            claims = self._open[identity]
            while claims and claims[0].opened_at < oldest and claims[0].outcome.done():
                claims.popleft()
            if not claims:
                del self._open[identity]

    def __len__(self) -> int:
        return sum(len(claims) for claims in self._open.values())
