"""Retrying what fails for a moment: a storage server restarting, OpenSearch throttling, a
broker electing a leader. tenacity does the retrying (exponential backoff with full jitter, so a
fleet of workers does not retry in step); this module says how long and what counts.

A call is retried only while its error is transient (the adapter says which are: connection
refused, timeouts, 5xx, throttling); a permanent one (404, 403, a validation error) is raised at
once. Retries stop when the budget is spent, and the call fails with a StageFailure whose code
says what was unavailable and how many attempts were made.

The budget belongs to the stage: Runtime.handle sets it for the message it works on
(RESTYLE_RETRY_BUDGET_S, RESTYLE_RETRY_BUDGETS per stage), and every adapter call made while
that message is handled retries within it.
"""
from __future__ import annotations

import contextvars
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from tenacity import (AsyncRetrying, RetryCallState, RetryError, retry_if_exception,
                      stop_before_delay, wait_random_exponential)

from schemas import ErrorCode, StageFailure

log = logging.getLogger("restyle.retries")
R = TypeVar("R")


@dataclass(frozen=True)
class RetryPolicy:
    # How long one call may go on retrying (0: one attempt only).
    budget_s: float = 60.0
    # Waits grow from first_wait_s, doubling, drawn at random below the bound (full jitter),
    # and never above max_wait_s.
    first_wait_s: float = 0.5
    max_wait_s: float = 10.0


_policy: contextvars.ContextVar[RetryPolicy] = contextvars.ContextVar(
    "restyle_retry_policy", default=RetryPolicy())


@contextmanager
def retry_policy(policy: RetryPolicy):
    """Calls made inside (in this task and the tasks it starts) retry within policy."""
    token = _policy.set(policy)
    try:
        yield
    finally:
        _policy.reset(token)


def current_policy() -> RetryPolicy:
    return _policy.get()


async def retried(call: Callable[[], Awaitable[R]], transient: Callable[[BaseException], bool],
                  what: str, code: ErrorCode, policy: RetryPolicy | None = None) -> R:
    """await call(), again after a wait while it raises a transient error and the budget
    lasts. Spent: StageFailure(code) naming what failed, the attempts and the last error.
    Anything else call raises is raised as it is."""
    policy = policy or _policy.get()
    started = time.monotonic()

    def before_sleep(state: RetryCallState) -> None:
        log.info("%s: attempt %d failed (%s); retrying in %.1f s", what, state.attempt_number,
                 state.outcome.exception(), state.next_action.sleep if state.next_action else 0)

    retrying = AsyncRetrying(
        # stop_before_delay: no attempt starts (and no wait is slept) past the budget.
        stop=stop_before_delay(policy.budget_s),
        wait=wait_random_exponential(multiplier=policy.first_wait_s, max=policy.max_wait_s),
        retry=retry_if_exception(transient), before_sleep=before_sleep)
    async def attempt() -> R:  # a coroutine function, so tenacity awaits what call returns
        return await call()

    try:
        return await retrying(attempt)
    except RetryError as spent:
        attempts = spent.last_attempt.attempt_number
        last = spent.last_attempt.exception()
        raise StageFailure(
            code, f"{what} failed {attempts} time{'s' if attempts != 1 else ''} over "
                  f"{time.monotonic() - started:.1f} s and was given up (retry budget "
                  f"{policy.budget_s:g} s): {describe(last)}", attempts=attempts) from last


def rerun_wait(policy: RetryPolicy, attempt: int) -> float:
    """How long a stage that raised waits before it runs the message again (attempt: how many
    runs failed so far): doubling from first_wait_s up to max_wait_s, its second half drawn at
    random, so the workers that met one failure together do not run again in step, and none
    runs again at once ("equal jitter": tenacity's waits are for calls it makes itself, and
    this loop is the stage's own)."""
    bound = min(policy.max_wait_s, policy.first_wait_s * 2 ** attempt)
    return bound / 2 + random.uniform(0, bound / 2)


def describe(exc: BaseException | None) -> str:
    text = str(exc) if exc is not None else ""
    return text or type(exc).__name__
