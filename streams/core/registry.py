"""The model registry: every trained adapter's record (schemas.avatars.ModelRecord), read by
every worker from the compacted models topic. A model just trained is found at once (a lookup
that misses waits for the reader to catch up); a deleted one stays as a record with status
"deleted", so a lookup can say so."""
from __future__ import annotations

import asyncio

from schemas.avatars import ModelRecord, registry_key
from streams.core.compacted import CompactedView

READY_TIMEOUT_S = 10.0


class RegistryUnavailable(Exception):
    """The registry has not been read yet (the broker is down or the worker is starting)."""


class ModelRegistry(CompactedView[ModelRecord]):
    unavailable = "model lookups are refused"

    def __init__(self, connection: dict, topic: str):
        super().__init__(connection, topic, ModelRecord)

    async def find(self, tenant: str, model_id: str) -> ModelRecord | None:
        """The model's latest record (deleted ones included), or None if it never existed."""
        await self.ready()
        key = registry_key(tenant, model_id)
        record = self.get(key)
        if record is None:
            await self.catch_up()
            record = self.get(key)
        return record

    async def of_tenant(self, tenant: str) -> list[ModelRecord]:
        await self.ready()
        await self.catch_up()
        return sorted((r for r in self.records.values() if r.tenant == tenant),
                      key=lambda record: record.created_at)

    async def ready(self) -> None:
        try:
            await asyncio.wait_for(self.loaded.wait(), READY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise RegistryUnavailable(f"the model registry ({self.topic}) could not be read "
                                      f"within {READY_TIMEOUT_S:.0f}s") from None
