"""Catalog ingestion: image size, index write batches, captions."""
from __future__ import annotations

from streams.core.settings.base import SettingsBase


class CatalogSettings(SettingsBase):
    # Product images are resized to at most this side before embedding and captioning.
    catalog_max_side: int = 512
    # The indexing stage writes in batches: when this many products are waiting, or after
    # this many seconds, whichever comes first.
    catalog_batch_size: int = 64
    catalog_flush_s: float = 1.0
    # Text the captioner continues (BLIP-style conditional captioning); empty for none.
    # For chat VLMs it is the user turn, sent through the model's chat template.
    caption_prompt: str = "a photo of"
    caption_max_tokens: int = 30
