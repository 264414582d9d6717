"""Shared fixtures: tiny models built once, real photos, and (for end-to-end tests) one embedded
stack per session — a real Kafka-protocol broker, a real S3 server and real worker processes."""
from __future__ import annotations

import io
import json
import os
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from tests.otlp import OtlpReceiver

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Where the model tests run: the CPU here; bench/gpu_check.sh sets cuda on a GPU machine.
TEST_DEVICE = os.environ.get("RESTYLE_TEST_DEVICE", "cpu")


def interior_photos() -> list[Path]:
    import interior_photos as photos

    return [Path(p) for p in photos.get_all_photos()]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    from agents.models.tiny import ROLES, build_tiny_models

    # bench/gpu_check.sh names the roles its machine can build (no ONNX wheels there).
    roles = os.environ.get("RESTYLE_TEST_MODEL_ROLES")
    return build_tiny_models(tmp_path_factory.mktemp("models") / "tiny",
                             roles=roles.split(",") if roles else ROLES)


@pytest.fixture(scope="session")
def room_photos() -> list[Path]:
    return interior_photos()


@pytest.fixture(scope="session")
def room_image(room_photos) -> Image.Image:
    return Image.open(room_photos[1]).convert("RGB")


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but which carries almost no data: the shape
    of a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


class TopicCollector:
    """Reads topics from the beginning with a plain Kafka client (confluent-kafka, not the app's
    own), keeping every record so tests can wait for what they expect."""

    def __init__(self, bootstrap: str, topics: list[str], partitions: int):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        # log_level 2: a collector outliving its broker (a test that stops one) would log
        # every failed reconnect, burying the suite's own output.
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "restyle-tests",
                                  "enable.auto.commit": False, "log_level": 2})
        self.consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING)
                              for t in topics for p in range(partitions)])
        self.records: dict[str, list] = {t: [] for t in topics}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            message = self.consumer.poll(0.2)
            if message is None or message.error():
                continue
            with self.lock:
                self.records[message.topic()].append(message)

    def wait_for(self, topic: str, predicate, timeout_s: float = 120, count: int = 1) -> list:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                found = [m for m in self.records[topic] if predicate(m)]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no {count} matching record(s) on {topic} within {timeout_s}s")

    def matching(self, topic: str, predicate) -> list:
        with self.lock:
            return [m for m in self.records[topic] if predicate(m)]

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.consumer.close()


class E2E:
    """Handles for end-to-end tests: endpoints, a plain producer, collectors, the S3 client."""

    def __init__(self, stack, settings, collector):
        import boto3
        from confluent_kafka import Producer

        self.stack = stack
        self.settings = settings
        self.endpoints = stack.endpoints
        self.collector = collector
        # log_level 2: critical only (no connection-refused chatter once the broker stops)
        # murmur2: the partitioner Java clients and aiokafka use, so a key lands where the
        # workers expect it (librdkafka's default would differ).
        self.producer = Producer({"bootstrap.servers": self.endpoints["kafka_bootstrap"],
                                  "log_level": 2, "partitioner": "murmur2_random"})
        self.s3 = boto3.client("s3", endpoint_url=self.endpoints["s3_endpoint"],
                               aws_access_key_id=self.endpoints["s3_access_key"],
                               aws_secret_access_key=self.endpoints["s3_secret_key"],
                               region_name="us-east-1")
        self.bucket = self.endpoints["s3_bucket"]
        self.status_url = self.endpoints["status_url"]
        self._keys: dict[str, str] = {}

    def publish(self, value, key: bytes | None = None, topic: str = "restyle.uploads",
                headers: list | None = None) -> None:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.producer.produce(topic, raw, key=key, headers=headers)
        self.producer.flush(10)

    def put_object(self, key: str, data: bytes) -> str:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    def result(self, job_id: str, timeout_s: float = 180) -> dict:
        records = self.collector.wait_for(
            "restyle.results", lambda m: m.key() == job_id.encode(), timeout_s)
        return json.loads(records[0].value())

    def results(self, job_id: str) -> list[dict]:
        return [json.loads(m.value()) for m in
                self.collector.matching("restyle.results", lambda m: m.key() == job_id.encode())]

    def keyed_records(self, topic: str, key: str, quiet_s: float = 3.0) -> list:
        """The records keyed key on a topic the collector does not follow: read from the
        beginning until nothing has arrived for quiet_s."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.endpoints["kafka_bootstrap"],
                             "group.id": f"restyle-tests-{topic}", "log_level": 2,
                             "enable.auto.commit": False})
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                         for p in range(self.settings.partitions)])
        found, quiet_until = [], time.monotonic() + quiet_s
        try:
            while time.monotonic() < quiet_until:
                message = consumer.poll(0.2)
                if message is None or message.error():
                    continue
                quiet_until = time.monotonic() + quiet_s
                if message.key() == key.encode():
                    found.append(message)
        finally:
            consumer.close()
        return found

    @property
    def client_settings(self):
        """Settings as a `restyle` command on this machine sees them (endpoints.json filled in,
        the default tenant's API key included)."""
        from streams.core.settings import load_settings

        return load_settings(state_dir=self.settings.state_dir)

    def key_for(self, tenant: str) -> str:
        """An API key for tenant (created once per session, the way `restyle keys create`
        does); the default tenant's is the one `restyle up` wrote into endpoints.json."""
        if tenant not in self._keys:
            from streams.api.auth.keystore import create_key
            from streams.cli.client import run

            # In a thread of its own: a test driving a browser has Playwright's event loop
            # running in this one.
            with ThreadPoolExecutor(1) as thread:
                self._keys[tenant] = thread.submit(
                    lambda: run(create_key(self.client_settings, tenant, "tests"))).result()[0]
        return self._keys[tenant]

    def auth(self, tenant: str | None = None) -> dict:
        """The Authorization header of tenant's key (the default tenant's when None)."""
        key = self.key_for(tenant) if tenant else self.endpoints["api_key"]
        return {"Authorization": f"Bearer {key}"}

    def request(self, method: str, path: str, data: bytes | None = None,
                headers: dict | None = None, tenant: str | None = None,
                authorized: bool = True) -> tuple[int, dict]:
        """Call the status API as tenant (or with no credential: authorized=False); the
        status code and the JSON body."""
        import urllib.error
        import urllib.request

        sent = {**(self.auth(tenant) if authorized else {}), **(headers or {})}
        request = urllib.request.Request(self.status_url + path, method=method, data=data,
                                         headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            text = error.read()
            try:
                return error.code, json.loads(text or b"{}")
            except json.JSONDecodeError:  # aiohttp's own refusals are plain text
                return error.code, {"text": text.decode(errors="replace")}

    def post_json(self, path: str, body, tenant: str | None = None, **options
                  ) -> tuple[int, dict]:
        return self.request("POST", path, json.dumps(body).encode(),
                            {"Content-Type": "application/json"}, tenant, **options)

    def get(self, path: str, tenant: str | None = None, **options) -> tuple[int, dict]:
        return self.request("GET", path, tenant=tenant, **options)


def docker_answers() -> bool:
    try:
        import docker

        return bool(docker.from_env(timeout=3).ping())
    except Exception:
        return False


def production_broker() -> str:
    """The production-grade broker for this run, in order: RESTYLE_KAFKA_BOOTSTRAP; Apache Kafka
    from Maven where Java and Maven exist; testcontainers' Kafka where a Docker engine answers;
    else none (the embedded Tansu run still happens)."""
    try:
        from streams.stack import apache_kafka
    except ImportError:  # a machine without the stack's packages (bench/gpu_check.sh)
        return "tansu"
    if os.environ.get("RESTYLE_KAFKA_BOOTSTRAP"):
        return "external"
    if apache_kafka.available() is None:
        return "apache-kafka"
    if docker_answers():
        return "testcontainers"
    return "tansu"


# The end-to-end suite runs once per broker: the production one, then Tansu (what
# `restyle up` embeds by default).
E2E_BROKERS = list(dict.fromkeys([production_broker(), "tansu"]))


def on_one_broker(e2e, broker: str, why: str) -> None:
    """Skip unless this end-to-end stack runs on broker: for cases the broker makes no
    difference to (each run on both adds minutes to a suite with a time budget)."""
    if e2e.broker != broker:
        pytest.skip(why)


@pytest.fixture
def first_broker_only(e2e):
    """For a case the broker makes no difference to: run on the production broker only."""
    on_one_broker(e2e, E2E_BROKERS[0], "does not depend on the broker: run on the first one")


@pytest.fixture
def embedded_stack_only(e2e):
    """For a case the broker makes no difference to: run on Tansu only (restyle up's)."""
    on_one_broker(e2e, "tansu", "does not depend on the broker: run on Tansu (restyle up's)")


BACKENDS_USED: list[str] = []  # what each end-to-end run actually ran on, for the summary
WEBHOOK_SECRET = "e2e-webhook-secret"  # the workers know it as RESTYLE_WEBHOOK_SECRETS["tests"]
# The end-to-end stacks also accept HS256 JWTs from this (test-only) identity provider.
JWT_SECRET, JWT_ISSUER, JWT_AUDIENCE = "e2e-only-hmac-secret-" * 2, "https://idp.e2e.test", \
    "restyle-e2e"
JOB_TIMEOUT_S = 90  # stalled jobs are given up after this long in the end-to-end stacks
# A worker stopped with SIGTERM finishes what it can within this long, then hands the rest back
# (30 s by default): a render longer than that is handed back (the hand-back test).
SHUTDOWN_GRACE_S = 2


def pytest_report_header(config):
    return f"end-to-end brokers: {', '.join(E2E_BROKERS)}"


def pytest_terminal_summary(terminalreporter):
    if BACKENDS_USED:
        terminalreporter.write_sep("-", "restyle test backends")
        for line in BACKENDS_USED:
            terminalreporter.write_line(line)


def announce(request, line: str) -> None:
    """Say now (not only in the summary) what a session fixture started, past output capture."""
    BACKENDS_USED.append(line)
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter and capture:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{line}")


def start_broker(kind: str, state: Path):
    """(bootstrap or None for `restyle up` to start Tansu, a stop function, a description)."""
    if kind == "external":
        bootstrap = os.environ["RESTYLE_KAFKA_BOOTSTRAP"]
        return bootstrap, lambda: None, f"external Kafka at {bootstrap} (RESTYLE_KAFKA_BOOTSTRAP)"
    if kind == "apache-kafka":
        from streams.stack.apache_kafka import KAFKA_VERSION, start_apache_kafka

        service, bootstrap = start_apache_kafka(state / "kafka", state / "logs")
        return bootstrap, service.stop, f"Apache Kafka {KAFKA_VERSION} (KRaft, Maven jars) at " \
                                        f"{bootstrap}"
    if kind == "testcontainers":
        from testcontainers.community.kafka import KafkaContainer

        container = KafkaContainer().with_kraft().start()
        bootstrap = container.get_bootstrap_server()
        return bootstrap, container.stop, f"testcontainers Kafka at {bootstrap}"
    return None, lambda: None, "Tansu (embedded by restyle up)"


@pytest.fixture(scope="module")
def exits_before(e2e) -> int:
    """How many process exits the e2e stack's supervisor had seen (and restarted) when a
    module's first test began: a module asserting that none of its input killed a worker
    requests this for all its tests (pytestmark) and compares at its end."""
    return len(e2e.stack.stack.exits)


@pytest.fixture(scope="session")
def opensearch_url(request, tmp_path_factory):
    """A real OpenSearch with k-NN: RESTYLE_OPENSEARCH_URL; else a node from Maven Central
    artifacts where a JDK 21+ exists; else testcontainers where Docker answers."""
    if os.environ.get("RESTYLE_OPENSEARCH_URL"):
        announce(request, f"[opensearch] RESTYLE_OPENSEARCH_URL={os.environ['RESTYLE_OPENSEARCH_URL']}")
        yield os.environ["RESTYLE_OPENSEARCH_URL"]
        return
    from streams.stack import opensearch_node

    why_not = opensearch_node.available()
    if why_not is None:
        node, url = opensearch_node.start_opensearch(tmp_path_factory.mktemp("opensearch"))
        announce(request, f"[opensearch] OpenSearch {opensearch_node.OPENSEARCH_VERSION} + "
                          f"k-NN (Maven Central artifacts) at {url}")
        yield url
        node.stop(30)
    elif docker_answers():
        from testcontainers.community.opensearch import OpenSearchContainer

        container = OpenSearchContainer("opensearchproject/opensearch:3.6.0").start()
        config = container.get_config()
        announce(request, "[opensearch] testcontainers OpenSearch 3.6.0")
        yield f"http://{config['host']}:{config['port']}"
        container.stop()
    else:
        pytest.skip(f"no OpenSearch: {why_not}; no Docker engine; RESTYLE_OPENSEARCH_URL unset")


@pytest.fixture(scope="session", params=E2E_BROKERS)
def e2e(request, tmp_path_factory, tiny_models, room_photos):
    from streams.core.settings import Settings
    from streams.stack.embedded import free_port
    from streams.stack.up import RestyleStack

    state = tmp_path_factory.mktemp(f"stack-{request.param}")
    bootstrap, stop_broker, described = start_broker(request.param, state)
    announce(request, f"[e2e] broker for this run: {described}")
    uploads = tmp_path_factory.mktemp("local-uploads")
    # The workers export their spans to a local OTLP receiver (a collector stands outside
    # restyle), every 0.2 s.
    traces = OtlpReceiver()
    extra_env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200",
        "RESTYLE_FILE_ROOTS": json.dumps([str(room_photos[0].parent), str(uploads)]),
        "RESTYLE_DEFAULT_STEPS": "2", "RESTYLE_DEFAULT_WIDTH": "64",
        "RESTYLE_DEFAULT_HEIGHT": "64", "HF_HUB_OFFLINE": "1",
        # A preview with every step but the last (renders here take 2 or 3 steps).
        "RESTYLE_PREVIEW_EVERY_STEPS": "1",
        # Every render step told: tests follow a render step by step (the default paces them,
        # tests/gpu_agent/test_progress_pace.py).
        "RESTYLE_PROGRESS_INTERVAL_S": "0",
        "RESTYLE_BACKGROUND_MAX_SIDE": "64", "RESTYLE_CONDITION_MAX_SIDE": "64",
        # Stalled jobs are given up after 90 s here (an hour by default), swept every 2 s.
        "RESTYLE_JOB_TIMEOUT_S": str(JOB_TIMEOUT_S), "RESTYLE_JOB_SWEEP_INTERVAL_S": "2",
        "RESTYLE_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
        "RESTYLE_QUALITY_STEPS": json.dumps({"standard": 2, "premium": 3}),
        # Avatars: prior-preservation class images drawn in 2 steps.
        "RESTYLE_AVATAR_CLASS_IMAGE_STEPS": "2",
        # A worker that stops polling for 8 s leaves its group: training longer than that
        # (the trainer's kill test) shows the trainer keeps polling while it trains.
        "RESTYLE_MAX_POLL_INTERVAL_S": "8",
        # A CPU worker's rebalance can outlast those 8 s on two busy cores (a second worker
        # starting beside it): out of its group, it is restarted after 60 s, not left there.
        "RESTYLE_REBALANCE_STUCK_S": "60",
        "RESTYLE_WEBHOOK_SECRETS": json.dumps({"tests": WEBHOOK_SECRET}),
        # The tests' webhook receivers listen on plain http on loopback.
        "RESTYLE_WEBHOOK_ALLOW_HTTP": "true", "RESTYLE_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
        "RESTYLE_JWT_ALGORITHMS": '["HS256"]', "RESTYLE_JWT_SECRET": JWT_SECRET,
        "RESTYLE_JWT_ISSUER": JWT_ISSUER, "RESTYLE_JWT_AUDIENCE": JWT_AUDIENCE,
        # Batches go through the pipeline two images at a time (the window is exercised).
        "RESTYLE_BATCH_WINDOW": "2",
        # The pools' consumer lag on /metrics, read every 5 s (15 by default).
        "RESTYLE_LAG_INTERVAL_S": "5",
        # Two full-size images per request at most (a test asks for three).
        "RESTYLE_MAX_REQUEST_PIXELS": str(2 * 2048 * 2048),
        # Small enough for a test to upload an object above it.
        "RESTYLE_MAX_IMAGE_BYTES": str(8 * 1024 * 1024),
        # One tenant with tight limits, for the tests that run into them.
        "RESTYLE_TENANT_LIMITS": json.dumps({"throttled": {"submit_rate": "3/minute"},
                                             "small-batches": {"max_batch_images": 2},
                                             "capped": {"max_jobs": 1},
                                             "streamer": {"max_streams": 1}}),
    }
    if request.param != "tansu":
        # Both ways of moving a job between stages run the whole suite: chained (the
        # default, what `restyle up` runs) on Tansu, split into one topic per stage here.
        extra_env["RESTYLE_CHAIN_STAGES"] = "false"
        # Kafka has transactions: results are fenced there, as `restyle up` does on Kafka.
        extra_env["RESTYLE_RESULT_TRANSACTIONS"] = "true"
        # Images between the workers by URI only (claim check): renders read their inputs
        # from storage here; on Tansu the small ones travel with the requests (the default).
        extra_env["RESTYLE_CARRY_IMAGE_MAX_BYTES"] = "0"
    if os.environ.get("RESTYLE_TEST_GUARANTEE"):
        extra_env["RESTYLE_PROCESSING_GUARANTEE"] = os.environ["RESTYLE_TEST_GUARANTEE"]
    settings = Settings(state_dir=state, web_port=free_port(), kafka_bootstrap=bootstrap)
    stack = RestyleStack(settings, models=str(tiny_models), extra_env=extra_env)
    try:
        stack.start()
    except BaseException:
        stop_broker()
        raise
    # As `restyle up` does: a worker that dies, or stops itself to rejoin its group, is
    # started again (a test that stops one for good takes it out of the stack first).
    stack.supervise_in_background()
    from streams.cli.demo import ingest_source, sample_catalog_dir
    from streams.core.settings import load_settings

    catalog = sample_catalog_dir(state / "catalog")
    try:
        ingest_source(load_settings(state_dir=state), str(catalog))
    except BaseException:  # no teardown runs for a fixture that fails before its yield
        stack.stop()
        stop_broker()
        raise
    collector = TopicCollector(stack.endpoints["kafka_bootstrap"],
                               ["restyle.results", "restyle.dlq", "restyle.job-events",
                                "restyle.notifications", "restyle.worker-deaths"],
                               settings.partitions)
    handles = E2E(stack, settings, collector)
    handles.local_uploads = uploads
    handles.broker = request.param
    handles.traces = traces
    yield handles
    collector.close()
    traces.close()
    stack.stop()
    stop_broker()
