"""Which inputs a job may read, checked at admission before any work: the deployment's buckets,
and for a named tenant its own storage and the buckets it is given, never another tenant's."""
from __future__ import annotations

import pytest

from agents.pipelines import topic_sets
from schemas import ErrorCode, StageFailure
from streams.core.settings import Settings
from tests.inprocess import InProcessRuntime


@pytest.fixture
def runtime(tmp_path) -> InProcessRuntime:
    return InProcessRuntime(Settings(state_dir=tmp_path, s3_buckets=["restyle", "acme-photos",
                                                                      "shared"],
                                     tenant_buckets={"acme": ["acme-photos"]}), topic_sets())


def refused(runtime, uri: str, tenant: str | None) -> str:
    with pytest.raises(StageFailure) as failure:
        runtime.check_input(uri, tenant)
    assert failure.value.error.code is ErrorCode.URI_REFUSED
    return failure.value.error.message


def test_a_named_tenant_reads_its_own_storage_and_its_buckets_only(runtime):
    runtime.check_input("s3://restyle/tenants/acme/uploads/j/room.jpg", "acme")
    runtime.check_input("s3://acme-photos/rooms/1.jpg", "acme")
    assert "RESTYLE_TENANT_BUCKETS" in refused(runtime, "s3://shared/rooms/1.jpg", "acme")
    # The storage base is the default tenant's (and holds every tenant's folder).
    for elsewhere in ("s3://restyle/incoming/1.jpg", "s3://restyle/x", "s3://restyle/uploads/x"):
        assert "outside this tenant's storage" in refused(runtime, elsewhere, "acme")


def test_no_tenant_reads_another_tenants_storage(runtime):
    for tenant in ("acme", "globex"):
        message = refused(runtime, "s3://restyle/tenants/initech/uploads/j/room.jpg", tenant)
        assert "outside this tenant's storage" in message
        # Escapes that storage would decode and resolve do not get out of one's own folder.
        for sneaky in (f"s3://restyle/tenants/{tenant}/../initech/x.jpg",
                       f"s3://restyle/tenants/{tenant}/%2e%2e/initech/x.jpg"):
            refused(runtime, sneaky, tenant)
    # A tenant without a bucket list reads the deployment's buckets, but still not others'.
    runtime.check_input("s3://shared/rooms/1.jpg", "globex")


def test_the_default_tenant_reads_what_the_deployment_may_and_nothing_more(runtime):
    runtime.check_input("s3://restyle/tenants/acme/uploads/j/room.jpg", None)
    runtime.check_input("s3://shared/rooms/1.jpg", "default")
    assert "is not one restyle may use" in refused(runtime, "s3://elsewhere/x.jpg", None)
    assert "file roots" in refused(runtime, "file:///etc/passwd", None)
