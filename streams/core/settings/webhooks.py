"""Webhooks for finished batches: where, signed with what, retried how."""
from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from streams.core.settings.base import SettingsBase


class WebhookSettings(SettingsBase):
    # A webhook for every batch (a batch's own webhook wins) and the HMAC secrets by name.
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_secrets: dict[str, str] = Field(default_factory=dict)
    # Which tenants may sign with each named secret ({"marketing": ["acme"]}); a name not
    # listed signs only for RESTYLE_DEFAULT_TENANT, so no tenant borrows another's secret.
    webhook_secret_tenants: dict[str, list[str]] = Field(default_factory=dict)
    webhook_attempts: int = 5
    webhook_backoff_s: float = 1.0
    webhook_timeout_s: float = 10.0
    # Webhook targets are user input: https only, and never a loopback, private, link-local or
    # reserved address unless a network is listed here (a receiver inside the cluster).
    webhook_allow_http: bool = False
    webhook_allowed_networks: list[str] = Field(default_factory=list)

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, networks):
        for network in networks:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        return networks
