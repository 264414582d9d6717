"""Which broker the end-to-end suite runs on (issue order): RESTYLE_KAFKA_BOOTSTRAP, then Apache
Kafka from Maven Central where Java and Maven exist, then testcontainers' Kafka where a Docker
engine answers, else only the embedded Tansu run. The suite always runs on Tansu as well."""
from __future__ import annotations

import pytest

from streams.stack import apache_kafka
from tests import conftest


@pytest.fixture
def machine(monkeypatch):
    """Set what this machine has: an external broker, Java + Maven, a Docker engine."""
    def have(bootstrap: str | None = None, java_and_maven: bool = False, docker: bool = False):
        if bootstrap:
            monkeypatch.setenv("RESTYLE_KAFKA_BOOTSTRAP", bootstrap)
        else:
            monkeypatch.delenv("RESTYLE_KAFKA_BOOTSTRAP", raising=False)
        monkeypatch.setattr(apache_kafka, "available",
                            lambda: None if java_and_maven else "no java on PATH")
        monkeypatch.setattr(conftest, "docker_answers", lambda: docker)
    return have


def test_an_external_broker_wins_over_everything(machine):
    machine(bootstrap="kafka.internal:9092", java_and_maven=True, docker=True)
    assert conftest.production_broker() == "external"


def test_apache_kafka_from_maven_comes_before_docker(machine):
    machine(java_and_maven=True, docker=True)
    assert conftest.production_broker() == "apache-kafka"


def test_testcontainers_where_only_docker_answers(machine):
    machine(docker=True)
    assert conftest.production_broker() == "testcontainers"


def test_only_the_embedded_broker_when_nothing_else_is_there(machine):
    machine()
    assert conftest.production_broker() == "tansu"


def test_the_external_broker_is_used_as_given(machine):
    machine(bootstrap="kafka.internal:9092")
    bootstrap, stop, described = conftest.start_broker("external", None)
    assert bootstrap == "kafka.internal:9092" and "RESTYLE_KAFKA_BOOTSTRAP" in described
    stop()
