"""What one tenant may ask of the status API at once: its request rate on the submitting
endpoints, its open progress streams, the images in one batch. Each a default, with
per-tenant overrides."""
from __future__ import annotations

from limits import parse_many
from pydantic import BaseModel, Field, field_validator

from streams.core.settings.base import SettingsBase


def parse_rate(value: str) -> str:
    try:
        parse_many(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a rate like '120/minute' or '10/second;500/hour' "
                         f"({exc})") from None
    return value


class TenantLimits(BaseModel):
    # Requests that submit work (POST) per tenant, in the limits library's notation.
    submit_rate: str | None = None
    # Server-Sent Event streams a tenant may hold open on one worker.
    max_streams: int | None = Field(None, ge=1)
    # Images one batch may list when submitted over HTTP.
    max_batch_images: int | None = Field(None, ge=1)
    # Jobs of the tenant in flight (started, not ended) above which the API refuses more.
    max_jobs: int | None = Field(None, ge=1)

    @field_validator("submit_rate")
    @classmethod
    def _rate(cls, value):
        return value if value is None else parse_rate(value)


class LimitSettings(SettingsBase):
    tenant_submit_rate: str = "120/minute"
    tenant_max_streams: int = Field(20, ge=1)
    tenant_max_batch_images: int = Field(1000, ge=1)
    tenant_max_jobs: int = Field(100, ge=1)
    # How many of a tenant's newest jobs its job list (`GET /jobs`, the web app's queue) keeps.
    tenant_recent_jobs: int = Field(200, ge=1, le=5000)
    # Images of one batch in the pipeline at once (0: all at once). The rest wait in the batch,
    # so another tenant's job queues behind at most this many of them at each stage.
    batch_window: int = Field(8, ge=0)
    # Per tenant, any of the three: {"acme": {"submit_rate": "600/minute",
    # "max_batch_images": 5000}}; what a tenant's entry leaves out comes from the defaults.
    tenant_limits: dict[str, TenantLimits] = Field(default_factory=dict)

    @field_validator("tenant_submit_rate")
    @classmethod
    def _rate(cls, value):
        return parse_rate(value)

    def limits_for(self, tenant: str) -> TenantLimits:
        given = self.tenant_limits.get(tenant, TenantLimits())
        return TenantLimits(
            submit_rate=given.submit_rate or self.tenant_submit_rate,
            max_streams=given.max_streams or self.tenant_max_streams,
            max_batch_images=given.max_batch_images or self.tenant_max_batch_images,
            max_jobs=given.max_jobs or self.tenant_max_jobs)
