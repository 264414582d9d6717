"""Webhook delivery: POST the notification, signed with HMAC-SHA256, retried with exponential
backoff and jitter (tenacity); the outcome is recorded on the batch (`notification` in GET /batches/{id}).

Headers: `X-Restyle-Signature: sha256=<hex HMAC of "<timestamp>.<body>">`,
`X-Restyle-Timestamp` (seconds; reject old ones to stop replays) and `X-Restyle-Delivery`
(the batch id: deliveries are at-least-once, so receivers dedupe on it)."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time

import aiohttp
from tenacity import (AsyncRetrying, RetryError, retry_if_exception_type,
                      stop_after_attempt, stop_before_delay, wait_random_exponential)

from schemas.background import BatchEvent, BatchEventKind, WebhookDelivery
from streams.adapters.outbound import OutboundPolicy, UnsafeTarget, guarded_session, redact
from streams.core.runtime import Runtime

log = logging.getLogger("restyle.webhooks")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (documented in the README; used by the tests' receiver)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def secret_for(settings, secret_name: str | None, tenant: str | None) -> str | None:
    """The secret a tenant's batch signs with. Unknown names and names given to other tenants
    get one answer, so a submitter learns nothing about other tenants' secrets."""
    if secret_name is None:
        return settings.webhook_secret
    tenant = tenant or settings.default_tenant
    allowed = settings.webhook_secret_tenants.get(secret_name, [settings.default_tenant])
    if secret_name not in settings.webhook_secrets or tenant not in allowed:
        raise KeyError(f"no webhook secret named {secret_name!r} is configured for tenant "
                       f"{tenant!r} (RESTYLE_WEBHOOK_SECRETS, RESTYLE_WEBHOOK_SECRET_TENANTS)")
    return settings.webhook_secrets[secret_name]


def retryable(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


def policy_of(settings) -> OutboundPolicy:
    return OutboundPolicy.of(settings.webhook_allow_http, settings.webhook_allowed_networks)


async def deliver(settings, delivery: WebhookDelivery, sleep=asyncio.sleep) -> dict:
    """POST the body until it is accepted (2xx) or attempts run out; the delivery outcome,
    as users see it (the URL redacted, errors without internal detail)."""
    body = json.dumps(delivery.body, separators=(",", ":")).encode()
    shown = redact(delivery.url)
    outcome = {"url": shown, "status": "failed", "attempts": 0, "http_status": None,
               "error": None, "signed": False}
    policy = policy_of(settings)
    try:
        secret = secret_for(settings, delivery.secret_name, delivery.tenant)
        policy.check_url(delivery.url)
    except (KeyError, UnsafeTarget) as exc:
        outcome["error"] = exc.args[0]
        return outcome
    # Unsigned only when no secret is configured at all (recorded as "signed": false).
    outcome["signed"] = bool(secret)

    async def post(session) -> None:
        """One attempt; raises Again when a later one may succeed."""
        outcome["attempts"] += 1
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Restyle-Delivery": delivery.batch_id,
                   "X-Restyle-Timestamp": timestamp,
                   "X-Restyle-Event": delivery.body.get("type", "")}
        if secret:
            headers["X-Restyle-Signature"] = sign(secret, timestamp, body)
        try:
            async with session.post(delivery.url, data=body, headers=headers,
                                    allow_redirects=False) as response:
                outcome["http_status"] = response.status
                if 200 <= response.status < 300:
                    outcome.update(status="delivered", error=None)
                    return
                outcome["error"] = f"HTTP {response.status}"
                if 300 <= response.status < 400:
                    outcome["error"] += ": redirects are not followed"
                if retryable(response.status):
                    raise Again()
                return  # the receiver refuses it: retrying will not help
        except UnsafeTarget as exc:
            outcome["error"] = exc.args[0]
        except aiohttp.ClientSSLError as exc:  # the same on every attempt: not retried
            log.info("webhook %s: %s", shown, exc)
            outcome["error"] = "the webhook host's certificate is not trusted" if isinstance(
                exc, aiohttp.ClientConnectorCertificateError) else \
                "TLS with the webhook host failed"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, UnsafeTarget):
                outcome["error"] = exc.os_error.args[0]
                return
            log.info("webhook %s: %s", shown, exc)  # the detail stays in the log
            outcome["error"] = "could not connect to the webhook host"
            raise Again() from exc
        except asyncio.TimeoutError as exc:
            outcome["error"] = f"no answer within {settings.webhook_timeout_s:g} s"
            raise Again() from exc
        except aiohttp.ClientError as exc:
            log.info("webhook %s: %s", shown, exc)
            outcome["error"] = "the webhook connection failed"
            raise Again() from exc

    # Waits drawn below webhook_backoff_s, then twice that, and so on (full jitter): receivers
    # that come back are not hit by every worker's retries at once.
    # At most RESTYLE_WEBHOOK_ATTEMPTS, and, where RESTYLE_RETRY_BUDGETS names the webhooks
    # stage, no new attempt once its budget is spent.
    stop = stop_after_attempt(settings.webhook_attempts)
    if "webhooks" in settings.retry_budgets:
        stop = stop | stop_before_delay(settings.retry_budgets["webhooks"])
    retrying = AsyncRetrying(
        stop=stop, sleep=sleep,
        wait=wait_random_exponential(multiplier=settings.webhook_backoff_s,
                                     max=settings.webhook_backoff_s
                                     * 2 ** max(0, settings.webhook_attempts - 2)),
        retry=retry_if_exception_type(Again))
    async with guarded_session(policy, settings.webhook_timeout_s) as session:
        try:
            await retrying(post, session)
        except RetryError:
            pass  # the attempts ran out: outcome holds the last one's error
    return outcome


class Again(Exception):
    """A delivery attempt that failed in a way a later attempt may not."""


def register(rt: Runtime) -> None:
    async def send(delivery: WebhookDelivery) -> None:
        outcome = await deliver(rt.settings, delivery)
        outcome["at"] = time.time()
        if outcome["status"] != "delivered":
            log.warning("webhook for batch %s not delivered: %s", delivery.batch_id,
                        outcome["error"])
        await rt.send(rt.topics.batch_events, delivery.batch_id, BatchEvent(
            batch_id=delivery.batch_id, kind=BatchEventKind.NOTIFIED, at=time.time(),
            delivery=outcome))

    rt.stage_agent("webhooks", send, WebhookDelivery, topic=rt.topics.webhooks, fail_jobs=False,
                   follows_cancellations=False)
