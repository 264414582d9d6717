"""What the gate asks of each request: which pages are public, which scope each needs."""
from __future__ import annotations

from aiohttp.test_utils import make_mocked_request

from schemas.credentials import Scope
from streams.api.auth.middleware import is_public, required_scope
from streams.core.settings.auth import AuthSettings


def test_health_is_public_and_metrics_only_while_configured_so():
    open_metrics, closed = AuthSettings(), AuthSettings(metrics_public=False)
    health, metrics = make_mocked_request("GET", "/healthz"), make_mocked_request("GET", "/metrics")
    assert is_public(health, open_metrics) and is_public(health, closed)
    for probe in ("/livez", "/readyz"):
        assert is_public(make_mocked_request("GET", probe), closed)
    assert is_public(metrics, open_metrics) and not is_public(metrics, closed)
    assert required_scope(metrics) is Scope.METRICS
    # A path that merely starts like a public one is not public.
    assert not is_public(make_mocked_request("GET", "/healthz/../jobs/x"), open_metrics)
    assert not is_public(make_mocked_request("GET", "/metrics2"), open_metrics)


def test_reads_need_read_and_everything_else_needs_write():
    assert required_scope(make_mocked_request("GET", "/jobs/x")) is Scope.READ
    assert required_scope(make_mocked_request("HEAD", "/jobs/x")) is Scope.READ
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert required_scope(make_mocked_request(method, "/batches")) is Scope.WRITE
