"""Catalog ingestion's topics. Each is renamed by its RESTYLE_TOPIC_* variable (the stage topics'
RESTYLE_TOPIC_CATALOG_* names are kept)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from schemas import CatalogEvent, CatalogItem
from streams.core.settings.broker import Carries, TopicNames


class CatalogTopics(TopicNames):
    # Product events in: what `restyle catalog ingest` or any upstream system publishes.
    catalog: str = "restyle.catalog"
    caption: str = Field("restyle.stage.catalog-caption",
                         validation_alias="RESTYLE_TOPIC_CATALOG_CAPTION")
    index: str = Field("restyle.stage.catalog-index",
                       validation_alias="RESTYLE_TOPIC_CATALOG_INDEX")

    carries: ClassVar[dict[str, Carries]] = {
        "catalog": Carries(CatalogEvent, "the product id",
                           "Products to add, change or delete in the catalog.", "in"),
        "caption": Carries(CatalogItem, "the product id",
                           "Embedded products to caption (chained by default)."),
        "index": Carries(CatalogItem, "the product id", "Products to write to the index."),
    }
