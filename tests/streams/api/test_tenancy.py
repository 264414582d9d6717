"""Ids a caller chooses live in its tenant's namespace, so one tenant cannot take an id another
will use (or read, or wait on, another tenant's job by guessing its id)."""
from __future__ import annotations

import pytest

from schemas.credentials import DEFAULT_SCOPES, Principal
from streams.api.auth.middleware import PRINCIPAL
from streams.api.tenancy import ForeignTenant, acting_tenant, scoped_id, sees
from streams.core.settings.auth import AuthSettings

SETTINGS = AuthSettings()


def request_of(tenant: str) -> dict:
    return {PRINCIPAL: Principal(tenant, frozenset(DEFAULT_SCOPES), "api-key test")}


def test_a_named_tenants_ids_get_its_prefix_and_the_default_tenants_do_not():
    assert scoped_id(request_of("acme"), SETTINGS, "order-1") == "acme:order-1"
    assert scoped_id(request_of("acme"), SETTINGS, "acme:order-1") == "acme:order-1"
    assert scoped_id(request_of("default"), SETTINGS, "order-1") == "order-1"


@pytest.mark.parametrize("tenant, given", [("globex", "acme:order-1"),
                                           ("default", "acme:order-1")])
def test_an_id_in_another_tenants_namespace_is_refused(tenant, given):
    with pytest.raises(ForeignTenant, match="'acme''s namespace"):
        scoped_id(request_of(tenant), SETTINGS, given)


def test_a_caller_sees_its_own_rows_and_events_without_a_tenant_belong_to_the_default():
    assert sees(request_of("acme"), SETTINGS, "acme")
    assert not sees(request_of("acme"), SETTINGS, "globex")
    assert not sees(request_of("acme"), SETTINGS, None)
    assert sees(request_of("default"), SETTINGS, None)


def test_a_body_may_repeat_the_tenant_but_never_change_it():
    assert acting_tenant(request_of("acme"), None) == "acme"
    assert acting_tenant(request_of("acme"), "acme") == "acme"
    with pytest.raises(ForeignTenant):
        acting_tenant(request_of("acme"), "globex")
