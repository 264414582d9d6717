"""What a caller may see and name: its own tenant's jobs, batches and results, nothing else.

Another tenant's id answers exactly like an unknown id (404), so ids cannot be probed. Events
published to Kafka without a tenant belong to RESTYLE_DEFAULT_TENANT.
"""
from __future__ import annotations

import re

from schemas.credentials import Principal
from streams.api.auth.middleware import PRINCIPAL
from streams.core.settings.auth import AuthSettings


class ForeignTenant(Exception):
    """A request naming a tenant its credential does not act for (403)."""


def caller(request) -> Principal:
    return request[PRINCIPAL]


def requested_by(request) -> str:
    """Who a cancellation names: the caller's tenant and credential."""
    who = caller(request)
    return f"tenant {who.tenant} ({who.credential})"


def sees(request, settings: AuthSettings, owner: str | None) -> bool:
    """Whether the caller may see a row owned by owner."""
    return (owner or settings.default_tenant) == caller(request).tenant


def scoped_id(request, settings: AuthSettings, given: str) -> str:
    """A job or batch id a caller chose, in its tenant's namespace: `order-1` from tenant acme
    is `acme:order-1`, so no tenant can take (or wait on) an id another one will use. An id
    already in the caller's namespace is kept (a retry with the id it was given back); one in
    another tenant's is refused. The default tenant's ids are not prefixed."""
    tenant = caller(request).tenant
    namespace, colon, _ = given.partition(":")
    if colon:
        if namespace != tenant:
            raise ForeignTenant(f"the id {given!r} is in tenant {namespace!r}'s namespace; "
                                f"this credential acts for {tenant!r}")
        return given
    return given if tenant == settings.default_tenant else f"{tenant}:{given}"


class InvalidId(Exception):
    """An id that does not match its pattern, as given or with its tenant prefix (400)."""


def chosen_id(request, settings: AuthSettings, given: str, field: str, pattern: str) -> str:
    """scoped_id for an id a request body or form gives, checked against the id pattern
    before and after the tenant prefix."""
    if not re.fullmatch(pattern, given):
        raise InvalidId(f"{field} must match {pattern}")
    scoped = scoped_id(request, settings, given)
    if not re.fullmatch(pattern, scoped):
        raise InvalidId(f"{field} with its tenant prefix ({scoped!r}) must match {pattern}")
    return scoped


def acting_tenant(request, named: str | None) -> str:
    """The tenant a submission runs for: always the credential's. A body, form field or
    header may repeat it, never change it."""
    tenant = caller(request).tenant
    if named not in (None, "", tenant):
        raise ForeignTenant(f"this credential acts for tenant {tenant!r}, not {named!r}")
    return tenant
