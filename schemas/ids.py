"""Identifiers every contract shares, and the version of the upload schema."""
from __future__ import annotations

SCHEMA_VERSION = 1
# Job ids name keys in Kafka, tables, storage prefixes and URLs: a safe, bounded alphabet.
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
# Batch ids too (they prefix their images' job ids, hence shorter).
BATCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,95}$"
