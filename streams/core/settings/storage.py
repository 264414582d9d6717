"""Where things live: local state, S3 or file:// storage, input limits."""
from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field

from streams.core.settings.base import SettingsBase


def default_state_dir() -> Path:
    return Path(os.environ.get("RESTYLE_STATE_DIR") or Path.home() / ".restyle")


class StorageSettings(SettingsBase):
    state_dir: Path = Field(default_factory=default_state_dir)
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
    # One S3 request's limit (connecting takes at most 10 s of it); a request that runs out is
    # retried within the stage's retry budget (RESTYLE_RETRY_BUDGET_S).
    s3_timeout_s: float = Field(60.0, gt=0)
    max_image_pixels: int = 40_000_000
    # Image objects above this size are refused from their size alone, before any download.
    max_image_bytes: int = Field(50 * 1024 * 1024, ge=1)
    # The S3 buckets restyle reads and writes, when inputs must not come from just any bucket
    # its credentials reach. Unset: RESTYLE_S3_BUCKET and the buckets the bucket rules name
    # (every bucket if a rule watches "*").
    s3_buckets: list[str] | None = None
    # Per tenant, the buckets its inputs may come from besides its own storage prefix
    # ({"acme": ["acme-photos"]}); a tenant not listed reads any bucket above. No tenant but
    # the default one reads another tenant's storage.
    tenant_buckets: dict[str, list[str]] = Field(default_factory=dict)

    @cached_property
    def results_base(self) -> str:
        return (self.storage_base or f"s3://{self.s3_bucket}").rstrip("/")
