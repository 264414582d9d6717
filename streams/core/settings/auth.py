"""Who may call the status API: API keys (kept on a Kafka topic, see streams/api/auth) and
JWTs from an identity provider."""
from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from streams.core.settings.base import SettingsBase

# Algorithms restyle accepts at all; RESTYLE_JWT_ALGORITHMS pins the ones a deployment uses.
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
KEY_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384",
                  "PS512", "EdDSA")


class AuthSettings(SettingsBase):
    # The tenant of events published without one (Kafka producers are trusted to name it):
    # a credential for this tenant sees them.
    default_tenant: str = "default"
    # The API key `restyle` clients send (`restyle up` writes one into endpoints.json).
    api_key: SecretStr | None = None
    # JWTs: empty turns them off. HS* verify with jwt_secret; RS*/ES*/PS*/EdDSA with
    # jwt_public_key (PEM text or a file path) or the keys at jwt_jwks_url. Issuer, audience
    # and expiry are always required.
    jwt_algorithms: list[str] = Field(default_factory=list)
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # The claim naming the caller's tenant, and the clock skew tolerated on exp/nbf/iat.
    jwt_tenant_claim: str = "tenant"
    jwt_leeway_s: float = Field(30.0, ge=0)
    # Prometheus scrapes /metrics without credentials unless this is false (then a credential
    # with the `metrics` scope is needed).
    metrics_public: bool = True
    # How long a request waits for the key ring to load at worker start before 503.
    keyring_ready_timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _jwt_complete(self):
        algorithms = self.jwt_algorithms
        if not algorithms:
            return self
        unknown = [a for a in algorithms if a not in HMAC_ALGORITHMS + KEY_ALGORITHMS]
        if unknown:
            raise ValueError(f"RESTYLE_JWT_ALGORITHMS: unsupported {unknown} (none is never "
                             f"accepted); choose from {HMAC_ALGORITHMS + KEY_ALGORITHMS}")
        if any(a in HMAC_ALGORITHMS for a in algorithms) and \
                any(a in KEY_ALGORITHMS for a in algorithms):
            # One key verifying two algorithm families is the classic confusion attack.
            raise ValueError("RESTYLE_JWT_ALGORITHMS mixes HMAC and public-key algorithms; "
                             "pin one family")
        if algorithms[0] in HMAC_ALGORITHMS and not self.jwt_secret:
            raise ValueError("RESTYLE_JWT_ALGORITHMS is HMAC: set RESTYLE_JWT_SECRET")
        if algorithms[0] in KEY_ALGORITHMS and not (self.jwt_public_key or self.jwt_jwks_url):
            raise ValueError("RESTYLE_JWT_ALGORITHMS is public-key: set RESTYLE_JWT_PUBLIC_KEY "
                             "or RESTYLE_JWT_JWKS_URL")
        if not (self.jwt_issuer and self.jwt_audience):
            raise ValueError("JWTs need RESTYLE_JWT_ISSUER and RESTYLE_JWT_AUDIENCE: a token "
                             "minted for another service must not be accepted here")
        return self
