"""JWTs from an identity provider, verified with PyJWT: the algorithms are pinned by settings
(never taken from the token), and signature, issuer, audience, expiry and not-before are all
checked. The tenant comes from a claim, the scopes from `scope` (space separated, OAuth 2) or
`scp` (a list)."""
from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import jwt

from schemas.credentials import DEFAULT_SCOPES, TENANT_PATTERN, Principal, Scope
from streams.core.settings.auth import HMAC_ALGORITHMS, AuthSettings


JWKS_REFRESH_INTERVAL_S = 60.0


class InvalidToken(Exception):
    """A token that proves nothing; the message says why (safe to show the caller)."""


class JwtVerifier:
    def __init__(self, settings: AuthSettings):
        self.settings = settings
        self.algorithms = list(settings.jwt_algorithms)
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True) \
            if settings.jwt_jwks_url else None
        self._key = self._static_key(settings)
        self._last_refresh = float("-inf")

    @staticmethod
    def _static_key(settings: AuthSettings):
        if settings.jwt_algorithms[0] in HMAC_ALGORITHMS:
            return settings.jwt_secret.get_secret_value()
        text = settings.jwt_public_key
        if text and not text.lstrip().startswith("-----BEGIN"):
            text = Path(text).read_text()  # a path to a PEM file (a mounted Secret)
        return text

    def _jwks_key(self, token: str):
        """The provider's key for token. A key id not in the cached set refetches the set (a
        rotated key), but at most once a minute: tokens with made-up key ids, sent before any
        signature is checked, must not turn into a flood of fetches."""
        kid = jwt.get_unverified_header(token).get("kid")
        known = {key.key_id for key in self._jwks.get_signing_keys()}
        if kid not in known:
            now = time.monotonic()
            if now - self._last_refresh < JWKS_REFRESH_INTERVAL_S:
                raise jwt.PyJWKClientError(f"unknown key id {kid!r}")
            self._last_refresh = now
        return self._jwks.get_signing_key_from_jwt(token).key

    async def verify(self, token: str) -> Principal:
        settings = self.settings
        try:
            key = self._key
            if self._jwks is not None:
                # The JWKS client fetches over HTTP (cached): off the event loop.
                key = await asyncio.to_thread(self._jwks_key, token)
            claims = jwt.decode(
                token, key, algorithms=self.algorithms, audience=settings.jwt_audience,
                issuer=settings.jwt_issuer, leeway=settings.jwt_leeway_s,
                options={"require": ["exp", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token was refused: {exc}") from None
        tenant = claims.get(settings.jwt_tenant_claim)
        if not isinstance(tenant, str) or not re.fullmatch(TENANT_PATTERN, tenant):
            raise InvalidToken(f"the token has no valid {settings.jwt_tenant_claim!r} claim")
        return Principal(tenant=tenant, scopes=scopes_of(claims),
                         credential=f"jwt {claims.get('sub', '?')}")


def scopes_of(claims: dict) -> frozenset[Scope]:
    """The restyle scopes a token grants; a token without a scope claim gets read and write
    (identity providers that issue no scopes still work), unknown scopes are ignored."""
    given = claims.get("scope", claims.get("scp"))
    if given is None:
        return frozenset(DEFAULT_SCOPES)
    names = given.split() if isinstance(given, str) else given if isinstance(given, list) else []
    known = {scope.value: scope for scope in Scope}
    return frozenset(known[name] for name in names if isinstance(name, str) and name in known)
