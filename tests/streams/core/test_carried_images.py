"""Small images travel with render requests and replies beside their URIs, within a budget
per message (RESTYLE_CARRY_IMAGE_MAX_BYTES), so that a reply with many images stays under the
broker's message limit; the rest travel by URI only."""
from __future__ import annotations

from streams.core.runtime import within_budget


def test_images_are_carried_in_order_while_they_fit_the_budget_together():
    encoded = {"s3://r/0.png": b"a" * 60, "s3://r/1.png": b"b" * 50, "s3://r/2.png": b"c" * 30}
    assert list(within_budget(encoded, 100)) == ["s3://r/0.png", "s3://r/2.png"]
    assert within_budget(encoded, 100)["s3://r/2.png"] == b"c" * 30


def test_a_budget_of_zero_carries_nothing_and_one_image_too_large_is_left_out():
    encoded = {"s3://r/depth.png": b"d" * 10}
    assert within_budget(encoded, 0) == {}
    assert within_budget(encoded, 9) == {}
    assert within_budget(encoded, 10) == encoded
