"""Who is calling: an API key as it is kept on the api-keys topic (a hash, never the key), and
the principal a verified credential (API key or JWT) stands for."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pydantic import BaseModel, Field

# A tenant names a prefix in storage and a row owner in every table: keep it plain.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
API_KEY_PREFIX = "rsk_"


class Scope(str, Enum):
    READ = "read"  # GET jobs, batches, ingests, products
    WRITE = "write"  # submit jobs and batches, detect labels
    METRICS = "metrics"  # /metrics, when RESTYLE_METRICS_PUBLIC is false
    # Add, change and delete products of the catalog every tenant's makeovers match against
    # (POST /catalog/ingests): an operator's, never given by default.
    CATALOG = "catalog"


DEFAULT_SCOPES = (Scope.READ, Scope.WRITE)


class ApiKeyRecord(BaseModel):
    """One message on the api-keys topic, keyed by key_id (compacted: the latest wins)."""

    key_id: str = Field(pattern=r"^[0-9a-f]{12}$")
    tenant: str = Field(pattern=TENANT_PATTERN)
    name: str | None = Field(None, max_length=200)
    scopes: list[Scope] = Field(default_factory=lambda: list(DEFAULT_SCOPES))
    # sha256 of the whole key: keys carry 256 random bits, so a fast hash is enough (a slow
    # password hash protects guessable secrets, which these are not).
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class Principal:
    tenant: str
    scopes: frozenset[Scope]
    # How the caller proved who it is: "api-key <key_id>" or "jwt <sub>" (for logs).
    credential: str

    def may(self, scope: Scope) -> bool:
        return scope in self.scopes
