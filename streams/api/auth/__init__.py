"""Identity on the status API: API keys (kept as hashes on a compacted Kafka topic) and JWTs,
checked by one aiohttp middleware before any page runs."""
