"""Whoever waits for a key's next change in this process (the SSE streams: a job's, a
tenant's list of jobs), so that a stream sleeps until then instead of polling."""
from __future__ import annotations

import asyncio


class Watchers:
    def __init__(self):
        # key -> what its watchers wait on; set and dropped at its next change
        self._events: dict[str, asyncio.Event] = {}
        # Moves on when every key is announced at once (partitions were revoked): a stream
        # that sees it move knows this process may no longer own what it shows.
        self.generation = 0

    def changed(self, key: str) -> asyncio.Event:
        """An event set at key's next change (a new one after each)."""
        if key not in self._events:
            self._events[key] = asyncio.Event()
        return self._events[key]

    def announce(self, key: str) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def announce_all(self) -> None:
        self.generation += 1
        for key in list(self._events):
            self.announce(key)
