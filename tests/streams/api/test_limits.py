"""Per-tenant limits as the status API applies them (the `limits` library's moving windows,
real clocks): a tenant over its rate is told when to retry, other tenants are untouched."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.api.limits import TenantLimiter, TooManyStreams
from streams.core.settings.limits import LimitSettings


def test_a_tenant_over_its_rate_is_refused_with_retry_after_and_others_are_not():
    limiter = TenantLimiter(LimitSettings(tenant_submit_rate="3/minute"))
    answers = [limiter.submit("acme") for _ in range(4)]
    assert [allowed for allowed, _ in answers] == [True, True, True, False]
    assert [h["RateLimit-Remaining"] for _, h in answers] == ["2", "1", "0", "0"]
    refused = answers[-1][1]
    assert refused["RateLimit-Limit"] == "3" and 1 <= int(refused["Retry-After"]) <= 60
    assert "Retry-After" not in answers[0][1]
    assert limiter.submit("globex")[0] is True


def test_the_tightest_of_several_windows_decides_and_a_refusal_uses_no_quota():
    limiter = TenantLimiter(LimitSettings(tenant_submit_rate="2/second;3/hour"))
    assert limiter.submit("acme")[0] and limiter.submit("acme")[0]
    allowed, headers = limiter.submit("acme")
    assert not allowed and headers["RateLimit-Limit"] == "2"  # the per-second window
    assert int(headers["Retry-After"]) <= 1


def test_per_tenant_overrides_fall_back_to_the_defaults_field_by_field():
    settings = LimitSettings(tenant_submit_rate="5/minute", tenant_max_streams=4,
                             tenant_limits={"big": {"submit_rate": "100/minute"}})
    assert settings.limits_for("big").submit_rate == "100/minute"
    assert settings.limits_for("big").max_streams == 4
    assert settings.limits_for("small").submit_rate == "5/minute"


def test_open_streams_are_counted_per_tenant_and_released():
    limiter = TenantLimiter(LimitSettings(tenant_max_streams=2))
    with limiter.stream("acme"), limiter.stream("acme"):
        with pytest.raises(TooManyStreams, match="2 progress streams"):
            with limiter.stream("acme"):
                pass
        with limiter.stream("globex"):
            pass
    with limiter.stream("acme"):  # released when the streams ended
        pass


@pytest.mark.parametrize("given", [{"tenant_submit_rate": "lots"},
                                   {"tenant_limits": {"x": {"submit_rate": "1/fortnight"}}},
                                   {"tenant_max_streams": 0}])
def test_a_limit_that_cannot_be_read_is_refused_at_start(given):
    with pytest.raises(ValidationError):
        LimitSettings(**given)
