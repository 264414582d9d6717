"""The one gate in front of every page: who is calling (API key or JWT) and may they do this.

Missing or bad credentials answer 401, a credential without the needed scope 403, both in the
status API's error shape. The principal is left on the request for the pages, which scope
every read and write to its tenant.
"""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web as aioweb

from schemas.credentials import API_KEY_PREFIX, Principal, Scope
from streams.api.auth.api_keys import key_id_of, verifies
from streams.api.auth.jwts import InvalidToken, JwtVerifier
from streams.api.auth.keyring import KeyRing
from streams.core.settings.auth import AuthSettings

log = logging.getLogger("restyle.auth")

PRINCIPAL = "restyle.principal"  # where a page finds the caller: request[PRINCIPAL]
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Unauthorized(Exception):
    """No credential, or one that proves nothing (401)."""


class KeyRingLoading(Exception):
    """The worker has not read the api-keys topic yet (503)."""


class Authenticator:
    def __init__(self, settings: AuthSettings, ring: KeyRing):
        self.settings, self.ring = settings, ring
        self.jwts = JwtVerifier(settings) if settings.jwt_algorithms else None

    async def principal(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send Authorization: Bearer <API key or JWT>")
        if token.startswith(API_KEY_PREFIX):
            return await self._api_key(token)
        if self.jwts is None:
            raise Unauthorized("not a restyle API key (JWTs are not enabled here)")
        try:
            return await self.jwts.verify(token)
        except InvalidToken as exc:
            raise Unauthorized(str(exc)) from None

    async def _api_key(self, token: str) -> Principal:
        key_id = key_id_of(token)
        if key_id is None:
            raise Unauthorized("malformed API key")
        try:
            await asyncio.wait_for(self.ring.loaded.wait(), self.settings.keyring_ready_timeout_s)
        except asyncio.TimeoutError:
            raise KeyRingLoading() from None
        record = self.ring.get(key_id)
        if record is None:
            await self.ring.catch_up()  # a key created a moment ago
            record = self.ring.get(key_id)
        # One answer for unknown, wrong and revoked keys: a caller learns nothing by probing.
        if not verifies(record, token):
            raise Unauthorized("invalid or revoked API key")
        return Principal(tenant=record.tenant, scopes=frozenset(record.scopes),
                         credential=f"api-key {key_id}")


def required_scope(request: aioweb.Request) -> Scope:
    if request.path == "/metrics":
        return Scope.METRICS
    if request.path == "/catalog/ingests" and request.method == "POST":
        return Scope.CATALOG
    return Scope.READ if request.method in READ_METHODS else Scope.WRITE


# Probes carry no credentials (streams/api/health.py).
HEALTH_PAGES = ("/livez", "/readyz", "/healthz")
# What anyone may read: the API's own description, and the web app (its page and files hold
# no data; the calls it makes carry the user's key).
DOCUMENTS = ("/openapi.json", "/")
WEB_APP_FILES = "/app/"


def is_public(request: aioweb.Request, settings: AuthSettings) -> bool:
    return request.path in HEALTH_PAGES or request.path in DOCUMENTS or \
        (request.method in READ_METHODS and request.path.startswith(WEB_APP_FILES)) or \
        (request.path == "/metrics" and settings.metrics_public)


def auth_middleware(authenticator: Authenticator):
    settings = authenticator.settings

    @aioweb.middleware
    async def authenticate(request: aioweb.Request, handler):
        if is_public(request, settings):
            return await handler(request)
        try:
            principal = await authenticator.principal(request.headers.get("Authorization"))
        except Unauthorized as exc:
            log.info("refused %s %s from %s: %s", request.method, request.path,
                     request.remote, exc)
            return refusal(401, "unauthorized", str(exc),
                           {"WWW-Authenticate": 'Bearer realm="restyle"'})
        except KeyRingLoading:
            return refusal(503, "unavailable", "this worker is still loading API keys; retry "
                                               "shortly", {"Retry-After": "1"})
        needed = required_scope(request)
        if not principal.may(needed):
            return refusal(403, "forbidden", f"this credential lacks the {needed.value!r} scope")
        request[PRINCIPAL] = principal
        return await handler(request)

    return authenticate


def refusal(status: int, code: str, message: str, headers=None) -> aioweb.Response:
    """The status API's error shape ({"error": {"code", "message"}}), outside any view."""
    return aioweb.json_response({"error": {"code": code, "message": message}}, status=status,
                                headers=headers)
