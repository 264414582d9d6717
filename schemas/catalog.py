"""Catalog products as the vector index stores them."""
from __future__ import annotations

from pydantic import BaseModel, Field


class Product(BaseModel):
    product_id: str = Field(min_length=1, max_length=256)
    caption: str
    category: str | None = None
    image: str | None = None


class ProductHit(BaseModel):
    product: Product
    score: float
