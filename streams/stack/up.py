"""`restyle up`: start whatever is not configured externally (broker, S3 server), then the CPU
worker, the GPU worker and the status API; publish the endpoints in STATE_DIR/endpoints.json."""
from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from pathlib import Path

from agents.models.tiny import MANIFEST, ROLES, build_tiny_models
from schemas.credentials import DEFAULT_SCOPES, Scope
from streams.api.auth.keystore import create_key
from streams.core.settings import Settings
from streams.stack.apache_kafka import KAFKA_VERSION, start_apache_kafka
from streams.stack.embedded import (
    EMBEDDED_S3_KEY,
    EMBEDDED_S3_SECRET,
    Service,
    Stack,
    free_ports,
    python_command,
    start_process,
    start_seaweedfs,
    start_tansu,
    tansu_s3_environment,
)

# Tiny random-weight models cannot draw at 512 px in reasonable CPU time; start small.
TINY_RENDER_DEFAULTS = {"RESTYLE_DEFAULT_WIDTH": "64", "RESTYLE_DEFAULT_HEIGHT": "64",
                        "RESTYLE_DEFAULT_STEPS": "4"}


def ensure_tiny_models(state_dir: Path) -> Path:
    target = state_dir / "models" / "tiny"
    # Rebuilt when a role is missing (a directory written by an older restyle).
    if not (target / MANIFEST).exists() or not all((target / r).is_dir() for r in ROLES):
        build_tiny_models(target)
    return target


def resolve_models(models: str | None, state_dir: Path) -> tuple[dict[str, str], str]:
    """Environment for the workers and a sentence saying which weights they run."""
    if models == "tiny":
        directory = ensure_tiny_models(state_dir)
        env = {"RESTYLE_MODELS_DIR": str(directory)}
        env.update({k: v for k, v in TINY_RENDER_DEFAULTS.items() if k not in os.environ})
        return env, f"tiny random-weight models in {directory} (outputs are noise, by design)"
    if models:
        return {"RESTYLE_MODELS_DIR": str(Path(models).resolve())}, f"models from {models}"
    return {}, "public model ids (downloaded by Hugging Face on first use)"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds secrets), whatever the umask."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


class RestyleStack:
    def __init__(self, settings: Settings, models: str | None = None, cpu_workers: int = 1,
                 gpu_workers: int = 1, workers: bool = True,
                 extra_env: dict[str, str] | None = None, trainer_workers: int = 1):
        self.settings = settings
        self.extra_env = extra_env or {}
        self.models = models
        self.cpu_workers = cpu_workers if workers else 0
        self.gpu_workers = gpu_workers if workers else 0
        self.trainer_workers = trainer_workers if workers else 0
        self.stack = Stack()
        self.endpoints: dict = {}
        self.env: dict[str, str] = {}
        self.models_note = ""
        self.state_dir = Path(settings.state_dir).resolve()
        self.log_dir = self.state_dir / "logs"

    @property
    def endpoints_path(self) -> Path:
        return self.state_dir / "endpoints.json"

    def start(self, timeout_s: float = 300) -> dict:
        """Start everything; on any failure or interruption (a signal, start-up included)
        stop whatever was started before raising."""
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> dict:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.endpoints_path.unlink(missing_ok=True)
        settings = self.settings
        # The S3 store first: Tansu may keep its topics there.
        s3_endpoint, key, secret = settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key
        if not s3_endpoint and not (settings.storage_base or "").startswith("file://"):
            service, s3_endpoint = start_seaweedfs(self.state_dir / "s3", self.log_dir)
            self.stack.services.append(service)
            key, secret = EMBEDDED_S3_KEY, EMBEDDED_S3_SECRET
        bootstrap = settings.kafka_bootstrap
        broker_env, self.broker = {}, "external"
        if not bootstrap and settings.embedded_broker == "kafka":
            service, bootstrap = start_apache_kafka(self.state_dir / "kafka", self.log_dir)
            self.stack.services.append(service)
            self.broker = f"apache-kafka {KAFKA_VERSION}"
            # Kafka has transactions: results are fenced (streams/tracking/fencing.py).
            broker_env["RESTYLE_RESULT_TRANSACTIONS"] = "true"
        elif not bootstrap:
            service, bootstrap = self._start_tansu(s3_endpoint, key, secret)
            self.stack.services.append(service)
            broker_env["RESTYLE_RECOVERY_CONSISTENCY_CHECK"] = "false"
            # Tansu answers a long-poll only when its wait expires: every hop would wait it.
            if "RESTYLE_FETCH_MAX_WAIT_MS" not in os.environ:
                broker_env["RESTYLE_FETCH_MAX_WAIT_MS"] = "20"
        model_env, self.models_note = resolve_models(self.models, self.state_dir)
        # The broker's defaults first: what the caller passes explicitly wins over them.
        self.env = {**broker_env, **self.extra_env, "RESTYLE_KAFKA_BOOTSTRAP": bootstrap,
                    "RESTYLE_STATE_DIR": str(self.state_dir), **model_env}
        if s3_endpoint:
            self.env.update({"RESTYLE_S3_ENDPOINT": s3_endpoint, "RESTYLE_S3_ACCESS_KEY": key or "",
                             "RESTYLE_S3_SECRET_KEY": secret or ""})
            self._ensure_bucket(s3_endpoint, key, secret, self.settings.s3_bucket)
        api_key = self.create_default_key(bootstrap)
        web_port = settings.web_port if self.cpu_workers else None
        health = []
        # Every worker's port chosen at once, so no two are given the same one.
        spare = iter(free_ports(max(self.cpu_workers - 1, 0) + self.gpu_workers
                                + self.trainer_workers, besides=(settings.web_port,)))
        for n in range(self.cpu_workers):
            # The first serves the API on the port the user set; the others' are restyle's.
            port = settings.web_port if n == 0 else next(spare)
            self.start_worker("cpu", port, f"cpu-worker-{n}", port_movable=n > 0)
            health.append(port)
        for n in range(self.gpu_workers):
            port = next(spare)
            self.start_worker("gpu", port, f"gpu-worker-{n}", port_movable=True)
            health.append(port)
        for n in range(self.trainer_workers):
            port = next(spare)
            self.start_worker("trainer", port, f"trainer-{n}", port_movable=True)
            health.append(port)
        embedded_s3 = bool(key == EMBEDDED_S3_KEY and s3_endpoint and
                           not settings.s3_endpoint)
        if settings.bucket_watch or (settings.bucket_watch is None and embedded_s3):
            # SeaweedFS sends no bucket notifications: list the rules' prefixes instead, so
            # dropping a file into incoming/ is all a user does.
            self.stack.services.append(start_process(
                "bucket-watch", python_command("watch"), self.log_dir, env=self.env,
                supervised=True, kind="worker"))
        self.wait_healthy(health, timeout_s)
        self.endpoints = {
            "kafka_bootstrap": bootstrap,
            "broker": self.broker,
            "s3_endpoint": s3_endpoint,
            "s3_bucket": settings.s3_bucket,
            "s3_access_key": key,
            "s3_secret_key": secret,
            "s3_region": settings.s3_region,
            "status_url": f"http://{settings.web_host}:{web_port}" if web_port else None,
            "models_dir": model_env.get("RESTYLE_MODELS_DIR"),
            # The key `restyle` commands on this machine use (tenant RESTYLE_DEFAULT_TENANT).
            "api_key": api_key,
            "pid": os.getpid(),
        }
        write_private(self.endpoints_path, json.dumps(self.endpoints, indent=2))
        return self.endpoints

    def _start_tansu(self, s3_endpoint: str | None, key: str | None, secret: str | None
                     ) -> tuple[Service, str]:
        settings = self.settings
        if settings.embedded_broker_storage == "memory":
            self.broker = "tansu (embedded)"
            return start_tansu(self.log_dir)
        if not s3_endpoint:
            raise ValueError("RESTYLE_EMBEDDED_BROKER_STORAGE=s3 needs an S3 store: set "
                             "RESTYLE_S3_ENDPOINT, or leave RESTYLE_STORAGE_BASE unset so "
                             "restyle up starts one")
        bucket = settings.embedded_broker_bucket
        self._ensure_bucket(s3_endpoint, key, secret, bucket)
        self.broker = f"tansu (embedded, topics in s3://{bucket}/)"
        return start_tansu(self.log_dir, storage=f"s3://{bucket}/", env=tansu_s3_environment(
            s3_endpoint, key or "", secret or "", settings.s3_region))

    def create_default_key(self, bootstrap: str) -> str:
        """An API key for the default tenant, so `restyle submit/status` (and `catalog ingest`
        against the API) just work against this stack, whose operator the user is (published
        before any worker starts, so every worker has it)."""
        settings = self.settings.model_copy(update={"kafka_bootstrap": bootstrap})
        key, _ = asyncio.run(create_key(settings, settings.default_tenant, "restyle up",
                                        (*DEFAULT_SCOPES, Scope.CATALOG)))
        return key

    def start_worker(self, role: str, port: int, name: str,
                     port_movable: bool = False) -> Service:
        argv = python_command("worker", role, "--web-port", str(port))
        service = start_process(name, argv, self.log_dir, env=self.env, port=port,
                                supervised=True, kind="worker")
        service.port_movable = port_movable
        self.stack.services.append(service)
        return service

    def _ensure_bucket(self, endpoint: str, key: str | None, secret: str | None,
                       bucket: str) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                              aws_secret_access_key=secret, region_name=self.settings.s3_region,
                              config=Config(s3={"addressing_style": "path"}))
        deadline = time.monotonic() + 60
        while True:
            try:
                client.head_bucket(Bucket=bucket)
                return
            except Exception:
                try:
                    client.create_bucket(Bucket=bucket)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)  # the S3 gateway answers before its filer is ready

    def wait_healthy(self, ports: list[int], timeout_s: float = 300) -> None:
        """Wait until the workers on ports answer /healthz (followed to a new port if theirs
        was taken and they moved)."""
        deadline = time.monotonic() + timeout_s
        # Each awaited as its service (by name, its port may change), or as a bare port.
        pending = {next((s.name for s in self.stack.services if s.port == port), port)
                   for port in ports}
        while pending:
            problem = self.stack.check()
            if problem:
                self.stop()
                raise RuntimeError(problem)
            for awaited in list(pending):
                service = self.stack.service_named(awaited) if isinstance(awaited, str) \
                    else None
                port = service.port if service is not None else awaited
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                        pending.discard(awaited)
                except Exception:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"workers {sorted(map(str, pending))} not ready after "
                                   f"{timeout_s:.0f}s; see logs in {self.log_dir}")
            time.sleep(0.3)

    def check(self) -> str | None:
        return self.stack.check()

    def supervise(self) -> str | None:
        """Restart a worker that died (with backoff, logged); a dead server is a problem."""
        return self.stack.supervise()

    def supervise_in_background(self) -> None:
        self.stack.supervise_in_background()

    def stop(self) -> None:
        self.stack.stop()
        if self.endpoints_path.exists():
            self.endpoints_path.unlink()
