"""Catalog ingestion's topics (RESTYLE_TOPIC_<NAME> renames one)."""
from __future__ import annotations

from streams.core.settings.broker import TopicNames


class CatalogTopics(TopicNames):
    catalog: str = "restyle.catalog"
    catalog_caption: str = "restyle.stage.catalog-caption"
    catalog_index: str = "restyle.stage.catalog-index"
