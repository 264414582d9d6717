"""docker-compose.yml, checked without a Docker engine: valid against the Compose Specification's
schema (tests/specs/compose-spec.json), and what `docker compose up` on a laptop relies on:
pinned images, health checks that the workers wait for, restart policies, Kafka listeners for
containers and for the host, a CPU profile by default and a GPU profile, and every service
reaching the broker, the S3 store and OpenSearch by their compose names."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

from streams.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WORKERS = {name: s for name, s in SERVICES.items() if s.get("command", [None])[0] == "worker"}


def test_the_compose_file_is_valid_for_the_compose_specification():
    schema = json.loads((Path(__file__).parent / "specs" / "compose-spec.json").read_text())
    problems = [f"{list(e.path)}: {e.message[:200]}"
                for e in Draft202012Validator(schema).iter_errors(COMPOSE)]
    assert problems == []


def test_images_are_pinned():
    for name, service in SERVICES.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), name


def test_workers_wait_for_healthy_infrastructure_and_restart():
    infrastructure = {"kafka", "seaweedfs", "opensearch"}
    for name in infrastructure:
        assert SERVICES[name]["healthcheck"]["test"], name
    for name, worker in WORKERS.items():
        assert worker["restart"] == "unless-stopped", name
        assert {dependency: c["condition"] for dependency, c in worker["depends_on"].items()} \
            == {dependency: "service_healthy" for dependency in infrastructure}, name
        port = worker["command"][worker["command"].index("--web-port") + 1]
        assert f"localhost:{port}/readyz" in " ".join(worker["healthcheck"]["test"]), name
        grace = float(worker["stop_grace_period"].removesuffix("s"))
        assert grace > Settings().shutdown_grace_s + Settings().shutdown_leave_s, name


def test_kafka_listens_for_containers_and_for_the_host():
    kafka = SERVICES["kafka"]["environment"]
    advertised = kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka:19092" in advertised and "localhost:9092" in advertised
    assert "9092:9092" in SERVICES["kafka"]["ports"]
    for name, worker in WORKERS.items():
        assert worker["environment"]["RESTYLE_KAFKA_BOOTSTRAP"] == "kafka:19092", name


def test_up_renders_on_the_cpu_by_default_and_on_a_gpu_with_its_profile():
    default = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert default["COMPOSE_PROFILES"] == "cpu"
    roles = {}
    for name, worker in WORKERS.items():
        for profile in worker.get("profiles", ["(always)"]):
            roles.setdefault(profile, set()).add(worker["command"][1])
    assert roles["(always)"] == {"cpu"}
    assert roles["cpu"] == roles["gpu"] == {"gpu", "trainer"}
    for name, worker in WORKERS.items():
        reserved = worker.get("deploy", {}).get("resources", {}).get("reservations", {})
        wants_gpu = any(d.get("driver") == "nvidia" for d in reserved.get("devices", []))
        assert wants_gpu == ("gpu" in worker.get("profiles", [])), name
        assert worker["build"]["target"] == ("gpu" if wants_gpu else "cpu"), name


def test_every_service_reaches_the_others_by_their_compose_names():
    for name, worker in {**WORKERS, "watch": SERVICES["watch"]}.items():
        env = worker["environment"]
        assert env["RESTYLE_S3_ENDPOINT"].startswith("http://seaweedfs:"), name
        assert env["RESTYLE_OPENSEARCH_URL"].startswith("http://opensearch:"), name
    assert SERVICES["watch"]["command"] == ["watch"]
