"""What the stages find in images: boxes, detections, matched products, stored images."""
from __future__ import annotations

from pydantic import BaseModel


class Box(BaseModel):
    """Pixel coordinates in the image the detection was made on (x0, y0 top-left)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)


class Detection(BaseModel):
    label: str
    score: float
    box: Box
    embedding: list[float] | None = None


class ProductMatch(BaseModel):
    product_id: str
    caption: str
    category: str | None = None
    score: float
    box: Box
    label: str


class ImageRef(BaseModel):
    uri: str
    url: str | None = None
