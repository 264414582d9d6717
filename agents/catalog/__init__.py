"""Catalog ingestion: embed, caption, index in batches, one outcome per product."""
