"""API keys as `restyle keys` and `restyle up` manage them: create, list, revoke. A key is published as a hashed record on
the api-keys topic, where every worker reads it; the key itself is printed once and kept
nowhere."""
from __future__ import annotations

import time

from aiokafka import AIOKafkaProducer

from schemas.credentials import DEFAULT_SCOPES, ApiKeyRecord, Scope
from streams.api.auth.api_keys import mint
from streams.api.auth.keyring import KeyRing
from streams.core.kafka import client_options
from streams.core.settings import Settings
from streams.core.topics import ensure_topics


async def create_key(settings: Settings, tenant: str, name: str | None = None,
                     scopes: tuple[Scope, ...] = DEFAULT_SCOPES) -> tuple[str, ApiKeyRecord]:
    """A new key for tenant: (the key, to show once; its record, as published)."""
    key, record = mint(tenant, time.time(), name, scopes)
    await _publish(settings, record)
    return key, record


async def list_keys(settings: Settings) -> list[ApiKeyRecord]:
    await ensure_topics(settings, [settings.topics.api_keys])
    records = await KeyRing(client_options(settings), settings.topics.api_keys).read_all()
    return sorted(records.values(), key=lambda record: record.created_at)


async def revoke_key(settings: Settings, key_id: str) -> ApiKeyRecord | None:
    """Mark key_id revoked (every worker refuses it within a fetch); None if there is no such
    key. The record stays, so `restyle keys list` shows when it was revoked."""
    found = {record.key_id: record for record in await list_keys(settings)}.get(key_id)
    if found is None:
        return None
    if found.revoked_at is None:
        found = found.model_copy(update={"revoked_at": time.time()})
        await _publish(settings, found)
    return found


async def _publish(settings: Settings, record: ApiKeyRecord) -> None:
    await ensure_topics(settings, [settings.topics.api_keys])
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.api_keys, record.model_dump_json().encode(),
                                     key=record.key_id.encode())
    finally:
        await producer.stop()
