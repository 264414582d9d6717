"""Webhooks for finished batches: where, signed with what, retried how."""
from __future__ import annotations

from pydantic import Field

from streams.core.settings.base import SettingsBase


class WebhookSettings(SettingsBase):
    # A webhook for every batch (a batch's own webhook wins) and the HMAC secrets by name.
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_secrets: dict[str, str] = Field(default_factory=dict)
    webhook_attempts: int = 5
    webhook_backoff_s: float = 1.0
    webhook_timeout_s: float = 10.0
