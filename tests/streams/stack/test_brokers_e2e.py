"""What each broker gives the pipeline. Job and ingest state live in faust tables whose
changelogs are compacted topics, so a recovering worker replays the latest state per key, not
every change ever made."""
from __future__ import annotations

import pytest


def test_table_changelogs_are_compacted_topics(e2e):
    if e2e.broker == "tansu":
        pytest.skip("Tansu accepts cleanup.policy=compact but never compacts (README, Brokers)")
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": e2e.endpoints["kafka_bootstrap"]})
    for table in ("jobs", "ingests", "ingest-outcomes"):
        resource = ConfigResource("topic", f"restyle-{table}-changelog")
        configs = admin.describe_configs([resource])[resource].result(timeout=30)
        assert configs["cleanup.policy"].value == "compact", table
