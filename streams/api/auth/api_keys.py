"""API keys as users hold them: `rsk_<key id>_<secret>`. The key id (public, 12 hex) finds the
record; the secret (256 random bits) is checked against the record's hash and never stored."""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from schemas.credentials import API_KEY_PREFIX, DEFAULT_SCOPES, ApiKeyRecord, Scope

_KEY = re.compile(rf"^{API_KEY_PREFIX}([0-9a-f]{{12}})_[A-Za-z0-9_-]{{43}}$")


def mint(tenant: str, now: float, name: str | None = None,
         scopes: tuple[Scope, ...] = DEFAULT_SCOPES) -> tuple[str, ApiKeyRecord]:
    """A new key and the record that verifies it. The key is shown once; only the record is
    kept."""
    key_id = secrets.token_hex(6)
    key = f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKeyRecord(key_id=key_id, tenant=tenant, name=name, scopes=list(scopes),
                          sha256=digest(key), created_at=now)
    return key, record


def key_id_of(token: str) -> str | None:
    """The key id of a well-formed API key, else None."""
    found = _KEY.fullmatch(token)
    return found.group(1) if found else None


def verifies(record: ApiKeyRecord | None, token: str) -> bool:
    """Whether token is the live key record was minted for (constant-time comparison)."""
    if record is None or record.revoked_at is not None:
        return False
    return hmac.compare_digest(record.sha256, digest(token))


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
