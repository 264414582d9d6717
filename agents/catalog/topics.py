"""Catalog ingestion's topics. Each is renamed by its RESTYLE_TOPIC_* variable (the stage topics'
RESTYLE_TOPIC_CATALOG_* names are kept)."""
from __future__ import annotations

from pydantic import Field

from streams.core.settings.broker import TopicNames


class CatalogTopics(TopicNames):
    # Product events in: what `restyle catalog ingest` or any upstream system publishes.
    catalog: str = "restyle.catalog"
    caption: str = Field("restyle.stage.catalog-caption",
                         validation_alias="RESTYLE_TOPIC_CATALOG_CAPTION")
    index: str = Field("restyle.stage.catalog-index",
                       validation_alias="RESTYLE_TOPIC_CATALOG_INDEX")
