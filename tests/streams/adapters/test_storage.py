"""What storage refuses before reading anything: objects above the byte limit, buckets restyle
is not configured for, file:// paths outside the roots (real files on disk); and a store whose
certificate is not trusted, refused at once rather than retried."""
from __future__ import annotations

import asyncio
import time

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


def test_a_store_whose_certificate_is_not_trusted_fails_at_once_with_the_cause(
        tmp_path, monkeypatch):
    """An S3 endpoint whose certificate no CA restyle trusts signed is a setting to fix, not a
    store that is down for a moment: no retries (60 s of them by default), STORAGE_ERROR with
    the way to trust it, which works."""
    from tests.tls import https_with_a_private_ca

    async def read(url: str) -> bytes:
        store = Storage(S3Store(url, "key", "secret", "us-east-1", timeout_s=10), [])
        try:
            return await store.get("s3://restyle/photo.png")
        finally:
            await store.s3.close()

    with https_with_a_private_ca(tmp_path) as (url, ca):
        started = time.monotonic()
        with pytest.raises(StageFailure) as failure:
            asyncio.run(read(url))
        took = time.monotonic() - started
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))
        assert asyncio.run(read(url)) == b""  # trusted: the (empty) answer is read
    assert failure.value.error.code is ErrorCode.STORAGE_ERROR
    assert "certificate verify failed" in failure.value.error.message
    assert "AWS_CA_BUNDLE names that CA's file" in failure.value.error.message
    assert took < 10


def test_a_presigned_url_is_reused_while_nine_tenths_of_its_validity_remain():
    """Signing is botocore's endpoint resolution each time: a status page asked for 300
    times a second hands out the same URL, made again once a tenth of its validity has
    passed (so it still reads the image for at least nine tenths of it)."""
    import asyncio
    import time

    store = Storage(S3Store("http://127.0.0.1:9", "key", "secret", "us-east-1"), [],
                    presign_expiry_s=10)

    async def sign_three_times():
        try:
            first = await store.presign("s3://restyle/results/j/0.png")
            again = await store.presign("s3://restyle/results/j/0.png")
            other = await store.presign("s3://restyle/results/k/0.png")
            time.sleep(1.1)  # a tenth of the 10 s validity, and a new signing second
            later = await store.presign("s3://restyle/results/j/0.png")
            return first, again, other, later
        finally:
            await store.close()

    first, again, other, later = asyncio.run(sign_three_times())
    assert again == first and "X-Amz-Expires=10" in first and "/results/j/0.png" in first
    assert "/results/k/0.png" in other
    assert later != first and "/results/j/0.png" in later
