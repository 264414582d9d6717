"""How hard restyle tries before a job fails: retry budgets for what fails for a moment, and
how many times a stage may raise on one message."""
from __future__ import annotations

from pydantic import Field

from streams.adapters.retries import RetryPolicy
from streams.core.settings.base import SettingsBase


class ResilienceSettings(SettingsBase):
    # How long a stage goes on retrying a call to storage or the vector index that failed for
    # a moment (refused, timed out, 5xx, throttled) before the job fails with
    # storage_unavailable or index_unavailable and the attempt count; and how long the
    # producer retries a send (at least 30 s) before the job fails broker_unavailable.
    retry_budget_s: float = Field(60.0, ge=0)
    # Per stage, another budget ({"render": 300, "catalog-index": 600}; "webhooks" bounds a
    # webhook's retries in time too, beside webhook_attempts).
    retry_budgets: dict[str, float] = Field(default_factory=dict)
    # The waits between attempts: exponential from the first, full jitter, capped.
    retry_first_wait_s: float = Field(0.5, gt=0)
    retry_max_wait_s: float = Field(10.0, gt=0)
    # A stage that raises an unexpected error (a bug, a model error) on one message is run
    # again up to this many times in all; then the job fails with the attempt count.
    stage_attempts: int = Field(3, ge=1)
    # A message in flight each time its worker died (the in-flight journal,
    # streams/adapters/journal.py) fails its job `worker_crashed` once it has been in flight
    # at this many deaths. Higher than stage_attempts: a worker also dies of causes that are
    # not the message's (an eviction, a kill, a broken node), and every message it holds at
    # that moment is counted; the fault bench kills workers 20 times in 15 minutes with three
    # renders held each time, and 3 failed 7 of 3571 jobs there.
    crash_attempts: int = Field(5, ge=1)
    # A dead letter carries its original message whole; one larger than this (with the
    # headers it gains, it would pass the broker's 1 MB default) is kept in object storage
    # under {storage base}/dlq/ and named in the record's restyle-dlq-original header.
    dlq_max_inline_bytes: int = Field(900_000, ge=0)
    # On SIGTERM a worker stops taking work and gives what it holds this long to finish;
    # then a render or training still running is handed back (not committed: another worker
    # takes it; a training resumes from its checkpoint). Keep Kubernetes'
    # terminationGracePeriodSeconds above it.
    shutdown_grace_s: float = Field(30.0, ge=0)
    # Then committing and leaving the group may take this long; past it the worker exits
    # anyway (status 75), without committing: an unreachable broker would hold the commit for
    # ever, and what was not committed is delivered again. terminationGracePeriodSeconds
    # above the two together lets the worker end on its own.
    shutdown_leave_s: float = Field(30.0, gt=0)

    def retry_policy(self, stage: str) -> RetryPolicy:
        return RetryPolicy(budget_s=self.retry_budgets.get(stage, self.retry_budget_s),
                           first_wait_s=self.retry_first_wait_s,
                           max_wait_s=self.retry_max_wait_s)
