"""How often a render tells its progress.

Every told step is a job event: a send from the GPU worker, a record on the broker, a turn of
the tracker and a wake-up of every open progress stream. A GPU takes 20-30 steps a second at
512 px, so a job told each step would cost ~30 events of which a person watching a progress
bar sees a blur, and on a CPU host they take their cores from the render itself. So a step is
told once `interval_s` has passed since the last thing told of the render (its `generating`
status counts), and always when it carries a preview (previews keep their own pace:
RESTYLE_PREVIEW_EVERY_STEPS). A slow step (longer than the interval) is told every time, so the
stall sweeper, which measures time without progress, never mistakes a paced render for a stuck
one."""
from __future__ import annotations

import time
from typing import Callable


class ProgressPace:
    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic):
        """interval_s: the least time between two told steps (0: every step is told). Made
        when the render's `generating` status is sent: the first step is timed from then."""
        self.interval_s, self.clock = interval_s, clock
        self._last_told = clock()

    def tell(self, with_preview: bool = False) -> bool:
        """Whether this step is told (and if so, the interval starts again from now)."""
        now = self.clock()
        if not with_preview and now - self._last_told < self.interval_s:
            return False
        self._last_told = now
        return True
