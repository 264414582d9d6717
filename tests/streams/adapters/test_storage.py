"""What storage refuses before reading anything: objects above the byte limit, buckets restyle
is not configured for, file:// paths outside the roots (real files on disk)."""
from __future__ import annotations

import asyncio

import pytest

from schemas import ErrorCode, StageFailure
from streams.adapters.storage import S3Store, Storage


def storage(roots, buckets=None) -> Storage:
    return Storage(S3Store(None, None, None, "us-east-1"), roots, buckets=buckets)


def test_an_object_above_the_byte_limit_is_refused_from_its_size(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\x00" * 2_000)
    store = storage([tmp_path])
    assert len(asyncio.run(store.get(big.as_uri(), max_bytes=2_004))) == 2_004
    with pytest.raises(StageFailure, match="2,004 bytes, above the limit of 2,000") as failure:
        asyncio.run(store.get(big.as_uri(), max_bytes=2_000))
    assert failure.value.error.code is ErrorCode.IMAGE_TOO_LARGE


@pytest.mark.parametrize("uri", ["s3://someone-elses-bucket/photo.png", "s3://other/"])
def test_a_bucket_restyle_is_not_configured_for_is_refused_before_any_request(uri):
    store = storage([], buckets=frozenset({"restyle"}))
    with pytest.raises(StageFailure, match="is not one restyle may use") as failure:
        asyncio.run(store.get(uri) if not uri.endswith("/") else store.list(uri))
    assert failure.value.error.code is ErrorCode.URI_REFUSED


def test_dot_dot_in_a_file_uri_cannot_climb_out_of_the_roots(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("no")
    with pytest.raises(StageFailure) as failure:
        asyncio.run(storage([root]).get(f"file://{root}/../secret.txt"))
    assert failure.value.error.code is ErrorCode.URI_REFUSED


def test_the_default_buckets_follow_the_settings():
    from streams.core.settings import Settings

    assert Settings().allowed_buckets == {"restyle"}
    rules = [{"name": "r", "bucket": "photos", "prefix": "in/", "output_bucket": "renders"}]
    assert Settings(bucket_rules=rules).allowed_buckets == {"restyle", "photos", "renders"}
    assert Settings(bucket_rules=[{**rules[0], "bucket": "*"}]).allowed_buckets is None
    assert Settings(s3_buckets=["a", "b"]).allowed_buckets == {"a", "b"}


def test_a_listing_stops_at_its_limit(tmp_path):
    for n in range(30):
        (tmp_path / f"{n:02}.png").write_bytes(b"x")
    store = storage([tmp_path])
    assert len(asyncio.run(store.list(tmp_path.as_uri(), limit=11))) == 11
    assert len(asyncio.run(store.list(tmp_path.as_uri()))) == 30
