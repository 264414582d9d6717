"""What a caller may see and name: its own tenant's jobs, batches and results, nothing else.

Another tenant's id answers exactly like an unknown id (404), so ids cannot be probed. Events
published to Kafka without a tenant belong to RESTYLE_DEFAULT_TENANT.
"""
from __future__ import annotations

from schemas.credentials import Principal
from streams.api.auth.middleware import PRINCIPAL
from streams.core.settings.auth import AuthSettings


class ForeignTenant(Exception):
    """A request naming a tenant its credential does not act for (403)."""


def caller(request) -> Principal:
    return request[PRINCIPAL]


def sees(request, settings: AuthSettings, owner: str | None) -> bool:
    """Whether the caller may see a row owned by owner."""
    return (owner or settings.default_tenant) == caller(request).tenant


def acting_tenant(request, named: str | None) -> str:
    """The tenant a submission runs for: always the credential's. A body, form field or
    header may repeat it, never change it."""
    tenant = caller(request).tenant
    if named not in (None, "", tenant):
        raise ForeignTenant(f"this credential acts for tenant {tenant!r}, not {named!r}")
    return tenant
