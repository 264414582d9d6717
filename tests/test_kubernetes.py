"""The Kubernetes manifests (k8s/), checked without a cluster: each overlay is built with the
real kustomize, every object is validated against the Kubernetes API's schemas
(kubernetes-validate) or, for KEDA and the Prometheus Operator, against their CRDs' schemas
(vendored in tests/specs/crds/ from kedacore/keda v2.21.0 and prometheus-operator v0.85.0), and what a
platform team relies on is asserted: probes kept apart, restricted pods, rollouts that need no
spare GPU, grace periods longer than the workers' own stop, autoscaling on the workers' real
consumer groups within the partition count."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft7Validator

from streams.core.app import consumer_group
from streams.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ["dev", "prod"]
KUBERNETES_VERSION = "1.33.0"
CRDS = Path(__file__).parent / "specs" / "crds"
WORKERS = {"restyle-cpu": "cpu", "restyle-gpu": "gpu", "restyle-trainer": "trainer"}


def kustomize() -> str:
    found = ROOT / ".tools" / "bin" / "kustomize"
    if found.exists():
        return str(found)
    on_path = shutil.which("kustomize")
    if on_path is None:
        pytest.skip("no kustomize: ./install.sh test builds it with Go into .tools/bin")
    return on_path


def build(path: Path) -> list[dict]:
    built = subprocess.run([kustomize(), "build", str(path)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, build(ROOT / "k8s" / "overlays" / request.param)


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the CRD's OpenAPI v3 schema of that version, strict."""
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schemas[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = \
                refusing_unknown_fields(version["schema"]["openAPIV3Schema"])
    return schemas


def refusing_unknown_fields(schema):
    """The API server drops a field its CRD does not know (a misspelt `minReplicas` would go
    unnoticed): here it is an error, as kubernetes-validate's strict mode makes it for core
    kinds. Objects that keep unknown fields (x-kubernetes-preserve-unknown-fields) and the
    manifest's metadata are left open."""
    if isinstance(schema, list):
        return [refusing_unknown_fields(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: refusing_unknown_fields(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and \
            not schema.get("x-kubernetes-preserve-unknown-fields"):
        strict["additionalProperties"] = False
        if "metadata" in schema["properties"] and "apiVersion" in schema["properties"]:
            strict["properties"]["metadata"] = {"type": "object"}
    return strict


def of_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workers(objects: list[dict]) -> dict[str, dict]:
    return {name: o for name, o in {**of_kind(objects, "StatefulSet"),
                                     **of_kind(objects, "Deployment")}.items() if name in WORKERS}


def settings_of(objects: list[dict]) -> dict[str, str]:
    return next(o for o in objects if o["kind"] == "ConfigMap"
                and o["metadata"]["name"].startswith("restyle-") and
                "RESTYLE_PARTITIONS" in o.get("data", {}))["data"]


def test_every_object_is_valid_for_the_kubernetes_api_or_its_crd(overlay):
    _, objects = overlay
    custom = crd_schemas()
    for manifest in objects:
        key = (manifest["apiVersion"], manifest["kind"])
        if key in custom:
            problems = [f"{list(e.path)}: {e.message[:200]}"
                        for e in Draft7Validator(custom[key]).iter_errors(manifest)]
            assert problems == [], f"{manifest['kind']} {manifest['metadata']['name']}"
        else:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_probes_are_apart_and_startup_waits_for_the_models(overlay):
    _, objects = overlay
    for name, workload in workers(objects).items():
        container = workload["spec"]["template"]["spec"]["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 1200, name


def test_pods_run_restricted_with_writable_mounts_only_where_needed(overlay):
    _, objects = overlay
    pods = [o for o in objects if o["kind"] in ("StatefulSet", "Deployment")]
    assert pods
    for workload in pods:
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}
            assert not container["image"].startswith("restyle-"), "an image nobody can pull"
    claims = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert all("ReadWriteMany" not in c["spec"]["accessModes"] for c in claims)


def test_no_secret_values_in_the_manifests(overlay):
    _, objects = overlay
    assert of_kind(objects, "Secret") == {}
    for config in of_kind(objects, "ConfigMap").values():
        for key, value in config.get("data", {}).items():
            if key.endswith(("PASSWORD", "SECRET", "SECRET_KEY", "ACCESS_KEY", "SECRETS")):
                raise AssertionError(f"{key} belongs in a Secret")
            assert "change-me" not in value


def test_gpu_rollouts_need_no_spare_gpu_and_stops_outlast_the_workers_own(overlay):
    name, objects = overlay
    settings = settings_of(objects)
    grace = float(settings.get("RESTYLE_SHUTDOWN_GRACE_S", Settings().shutdown_grace_s))
    leave = Settings().shutdown_leave_s
    for workload_name, workload in workers(objects).items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > grace + leave, workload_name
    for gpu in ("restyle-gpu", "restyle-trainer"):
        deployment = of_kind(objects, "Deployment")[gpu]
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
        limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        if name == "prod":
            assert limits["nvidia.com/gpu"] == 1
            assert deployment["spec"]["template"]["spec"]["nodeSelector"]


def test_autoscaling_follows_the_workers_consumer_groups_within_the_partitions(overlay):
    name, objects = overlay
    scaled = of_kind(objects, "ScaledObject")
    if name == "dev":
        assert scaled == {}  # no KEDA on a one-node cluster
        return
    partitions = int(settings_of(objects)["RESTYLE_PARTITIONS"])
    settings = Settings()
    assert set(scaled) == set(WORKERS)
    for target, role in WORKERS.items():
        spec = scaled[target]["spec"]
        assert spec["scaleTargetRef"]["name"] == target
        assert spec["maxReplicaCount"] <= partitions
        trigger = spec["triggers"][0]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == consumer_group(settings, role)
        assert trigger["authenticationRef"]["name"] in of_kind(objects, "TriggerAuthentication")
    assert scaled["restyle-cpu"]["spec"]["minReplicaCount"] >= 1  # the status API lives there
    assert scaled["restyle-trainer"]["spec"]["minReplicaCount"] == 0


def test_prometheus_scrapes_every_worker(overlay):
    name, objects = overlay
    if name != "prod":
        return
    monitor = of_kind(objects, "ServiceMonitor")["restyle"]
    selected = [s for s in of_kind(objects, "Service").values()
                if monitor["spec"]["selector"]["matchLabels"].items()
                <= s["metadata"].get("labels", {}).items()]
    assert len(selected) == 1 and selected[0]["spec"]["selector"] == {"app": "restyle"}


def test_the_sqs_bucket_bridge_component_builds(tmp_path):
    k8s = Path(os.path.relpath(ROOT / "k8s", tmp_path))  # kustomize takes relative paths
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{k8s / 'base'}]\ncomponents: [{k8s / 'components' / 'sqs-bucket-bridge'}]\n")
    objects = build(tmp_path)
    bridge = of_kind(objects, "Deployment")["restyle-bucket-bridge"]
    kubernetes_validate.validate(bridge, KUBERNETES_VERSION, strict=True)
    assert bridge["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["bridge", "sqs"]


def test_the_dashboard_asks_only_for_metrics_the_workers_export():
    """Every series the Grafana dashboard queries exists in the workers' registry (a renamed
    metric would leave a panel empty)."""
    import json
    import re

    from streams.core.metrics import REGISTRY

    exported = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                    "gauge": [""]}[family.type]
        exported |= {family.name + suffix for suffix in suffixes}
    dashboard = json.loads((ROOT / "k8s" / "overlays" / "prod" / "dashboard.json").read_text())
    asked = {name for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"restyle_[a-z_]+", target["expr"])}
    assert len(asked) >= 10
    assert asked <= exported, asked - exported
