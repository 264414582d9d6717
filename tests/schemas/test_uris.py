"""Where each tenant's objects live, and what counts as inside a prefix."""
from __future__ import annotations

from schemas.uris import is_under, tenant_base


def test_the_default_tenant_keeps_the_results_base_and_others_get_their_own_prefix():
    assert tenant_base("s3://restyle", None, "default") == "s3://restyle"
    assert tenant_base("s3://restyle", "default", "default") == "s3://restyle"
    assert tenant_base("s3://restyle", "acme", "default") == "s3://restyle/tenants/acme"


def test_inside_means_below_the_prefix_without_climbing_out():
    base = "s3://restyle/tenants/acme"
    assert is_under("s3://restyle/tenants/acme/results/j/", base)
    assert not is_under("s3://restyle/tenants/acme-evil/x/", base)  # a sibling, not inside
    assert not is_under("s3://restyle/tenants/acme/../globex/x/", base)
    assert not is_under("s3://restyle/results/j/", base)
