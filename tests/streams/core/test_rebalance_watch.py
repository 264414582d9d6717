"""A worker whose rebalance does not end stops, so its supervisor starts it again in the group
(faust never polls a worker that went past its poll interval back into its group)."""
from __future__ import annotations

from streams.core.rebalance_watch import stuck_for


def test_a_rebalance_is_timed_from_the_first_look_that_saw_it():
    assert stuck_for(False, None, 100.0) == (None, 0.0)
    assert stuck_for(True, None, 100.0) == (100.0, 0.0)
    assert stuck_for(True, 100.0, 130.5) == (100.0, 30.5)
    assert stuck_for(False, 100.0, 131.0) == (None, 0.0)  # it ended: the next one starts anew


