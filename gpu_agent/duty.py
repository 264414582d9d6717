"""The GPU worker's duty cycle: the share of the time it holds work in which the model runs.

"Holds work": at least one render request received and not yet answered. A worker that waits
on Kafka, storage or image decoding while it holds work has a low duty cycle; one that only
idles when nothing is queued for it stays near 100%."""
from __future__ import annotations

import time

from streams.core.metrics import GPU_BUSY_SECONDS, GPU_HOLDING_SECONDS, GPU_IN_FLIGHT


class DutyMeter:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.in_flight = 0
        self.holding_since: float | None = None
        self.holding_s = 0.0
        self.busy_s = 0.0

    def received(self) -> None:
        if self.in_flight == 0:
            self.holding_since = self.clock()
        self.in_flight += 1
        GPU_IN_FLIGHT.set(self.in_flight)

    def answered(self) -> None:
        self.in_flight -= 1
        GPU_IN_FLIGHT.set(self.in_flight)
        if self.in_flight == 0 and self.holding_since is not None:
            held = self.clock() - self.holding_since
            self.holding_s += held
            GPU_HOLDING_SECONDS.inc(held)
            self.holding_since = None

    def model_ran(self, seconds: float) -> None:
        self.busy_s += seconds
        GPU_BUSY_SECONDS.inc(seconds)

    def duty_cycle(self) -> float | None:
        holding = self.holding_s
        if self.holding_since is not None:
            holding += self.clock() - self.holding_since
        return self.busy_s / holding if holding else None
