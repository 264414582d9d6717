"""Job tracking: when a job that stopped moving is given up, how often progress is stored."""
from __future__ import annotations

from pydantic import Field

from streams.core.settings.base import SettingsBase


class TrackingSettings(SettingsBase):
    # A job with no status change or progress for this long fails with code "timeout" (the
    # tracker sweeps its partitions every job_sweep_interval_s). 0 turns the sweeper off.
    job_timeout_s: float = 3600.0
    # Per pipeline, where its jobs may rightly wait longer: an avatar training can queue
    # behind others on a trainer (no events while it waits), then train for hours.
    job_timeouts: dict[str, float] = Field(default_factory=lambda: {"avatar_train": 86400.0})
    job_sweep_interval_s: float = 60.0
    # A job waiting for a GPU worker or a trainer (queued_for_gpu) is given up only after
    # this long in the queue (0: never): a busy pool is not a stalled job.
    gpu_queue_timeout_s: float = Field(86400.0, ge=0)
    # A render's progress ticks are stored in the jobs table at most this often (the status
    # API and its event stream still see every tick, from the partition owner's memory).
    # 0 stores every tick.
    progress_store_interval_s: float = Field(1.0, ge=0)
    # How far apart the clocks of restyle's hosts may be. For events written before it took
    # their partition (and this long after), a tracker looks for the result a stopped tracker
    # may have published, from this long before the event on (streams/tracking/published.py),
    # so as not to publish it twice.
    clock_skew_s: float = Field(60.0, ge=0)
    # Publish each result in a Kafka transaction under one transactional id per job-events
    # partition, so that a tracker that lost its partition while it worked (a long pause, a
    # network split) is fenced and cannot publish a second result (streams/tracking/
    # fencing.py). Needs a broker with transactions: on for Apache Kafka (`restyle up` turns
    # it on when it starts one), off for Tansu, which has none. Consumers of restyle.results
    # then read with isolation.level=read_committed.
    result_transactions: bool = False

    def timeout_for(self, pipeline: str | None, queued_for_gpu: bool = False) -> float:
        """How long a job of this pipeline may go without moving (0: forever)."""
        if queued_for_gpu:
            return self.gpu_queue_timeout_s
        return self.job_timeouts.get(pipeline or "", self.job_timeout_s)
