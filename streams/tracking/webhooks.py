"""Webhook delivery: POST the notification, signed with HMAC-SHA256, retried with exponential
backoff; the outcome is recorded on the batch (`notification` in GET /batches/{id}).

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

from schemas.background import BatchEvent, BatchEventKind, WebhookDelivery
from streams.core.runtime import Runtime

log = logging.getLogger("restyle.webhooks")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (documented in the README; used by the tests' receiver)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def secret_for(settings, secret_name: str | None) -> str | None:
    if secret_name is None:
        return settings.webhook_secret
    if secret_name not in settings.webhook_secrets:
        raise KeyError(f"no webhook secret named {secret_name!r} is configured "
                       f"(RESTYLE_WEBHOOK_SECRETS)")
    return settings.webhook_secrets[secret_name]


def retryable(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


async def deliver(settings, delivery: WebhookDelivery, sleep=asyncio.sleep) -> dict:
    """POST the body until it is accepted (2xx) or attempts run out; the delivery outcome."""
    body = json.dumps(delivery.body, separators=(",", ":")).encode()
    outcome = {"url": delivery.url, "status": "failed", "attempts": 0, "http_status": None,
               "error": None, "signed": False}
    try:
        secret = secret_for(settings, delivery.secret_name)
    except KeyError as exc:
        outcome["error"] = str(exc)
        return outcome
    # Unsigned only when no secret is configured at all (recorded as "signed": false).
    outcome["signed"] = bool(secret)
    timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_s)
    delay = settings.webhook_backoff_s
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt in range(1, settings.webhook_attempts + 1):
            outcome["attempts"] = attempt
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", "X-Restyle-Delivery":
                       delivery.batch_id, "X-Restyle-Timestamp": timestamp,
                       "X-Restyle-Event": delivery.body.get("type", "")}
            if secret:
                headers["X-Restyle-Signature"] = sign(secret, timestamp, body)
            try:
                async with session.post(delivery.url, data=body, headers=headers) as response:
                    outcome["http_status"] = response.status
                    if 200 <= response.status < 300:
                        outcome.update(status="delivered", error=None)
                        return outcome
                    outcome["error"] = f"HTTP {response.status}"
                    if not retryable(response.status):
                        return outcome  # the receiver refuses it: retrying will not help
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                outcome["error"] = f"{type(exc).__name__}: {exc}"
            if attempt < settings.webhook_attempts:
                await sleep(delay)
                delay *= 2
    return outcome


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

    rt.stage_agent("webhooks", send, WebhookDelivery, topic=rt.topics.webhooks, fail_jobs=False)
