"""Every API key record on the api-keys topic, kept current in each worker's memory (a
compacted view: any worker verifies any key, a revocation reaches all of them within one fetch,
and a key created a moment ago is found by waiting for the reader to catch up)."""
from __future__ import annotations

from schemas.credentials import ApiKeyRecord
from streams.core.compacted import CompactedView


class KeyRing(CompactedView[ApiKeyRecord]):
    unavailable = "API keys answer 503"

    def __init__(self, connection: dict, topic: str):
        super().__init__(connection, topic, ApiKeyRecord)
