"""A worker configured with another partition count than the topics it finds refuses to start,
saying why: jobs and status requests are routed by partition, so it would serve the wrong jobs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streams.core.settings import Settings
from streams.core.topics import TopicLayoutError, check_layout


def test_a_worker_refuses_topics_with_another_partition_count(e2e, tmp_path):
    assert e2e.settings.partitions != 2  # the stack's topics have another count
    env = {**os.environ, **e2e.stack.env, "RESTYLE_PARTITIONS": "2",
           "RESTYLE_STATE_DIR": str(tmp_path)}
    worker = subprocess.run([sys.executable, "-m", "streams.cli.main", "worker", "cpu",
                             "--web-port", "0"], env=env, capture_output=True, text=True,
                            timeout=120)

    assert worker.returncode == 1
    said = worker.stderr
    assert "refused to start" in said
    assert f"restyle.job-events has {e2e.settings.partitions}" in said
    assert "RESTYLE_PARTITIONS=2" in said
    assert "Traceback" not in said


def test_only_the_topics_that_route_jobs_must_match():
    """The compacted state topics (API keys, models, cancellations) are read whole by every
    worker, so their partition count is free; the others are named with their count."""
    settings = Settings(partitions=4)
    check_layout(settings, {"restyle.api-keys": 1, "restyle.models": 1,
                            "restyle.cancellations": 3, "restyle.uploads": 4})
    with pytest.raises(TopicLayoutError) as refused:
        check_layout(settings, {"restyle.uploads": 4, "restyle.results": 8,
                                "restyle.render-requests": 2})
    assert "restyle.render-requests has 2, restyle.results has 8" in str(refused.value)
