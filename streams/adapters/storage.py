"""Object storage behind one small interface, chosen by URI scheme: file:// or s3:// (aioboto3,
any S3-compatible endpoint)."""
from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from pathlib import Path

from schemas import ErrorCode, StageFailure
from schemas.uris import ObjectRef, parse_uri
from streams.adapters.retries import retried


def too_large(ref: ObjectRef, size: int, max_bytes: int) -> StageFailure:
    return StageFailure(ErrorCode.IMAGE_TOO_LARGE,
                        f"{ref.uri} is {size:,} bytes, above the limit of {max_bytes:,} "
                        f"(RESTYLE_MAX_IMAGE_BYTES)")


class FileStore:
    async def get(self, ref: ObjectRef, max_bytes: int | None = None) -> bytes:
        def read() -> bytes:
            path = Path(ref.key)
            size = path.stat().st_size
            if max_bytes is not None and size > max_bytes:
                raise too_large(ref, size, max_bytes)
            return path.read_bytes()

        try:
            return await asyncio.to_thread(read)
        except FileNotFoundError:
            raise StageFailure(ErrorCode.OBJECT_NOT_FOUND, f"{ref.uri} does not exist") from None
        except IsADirectoryError:
            raise StageFailure(ErrorCode.OBJECT_NOT_FOUND, f"{ref.uri} is a directory") from None

    async def put(self, ref: ObjectRef, data: bytes, content_type: str,
                  metadata: dict[str, str] | None = None) -> None:
        def write() -> None:
            path = Path(ref.key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_bytes(data)
            tmp.replace(path)  # readers never see a half-written file

        await asyncio.to_thread(write)

    async def exists(self, ref: ObjectRef) -> bool:
        return Path(ref.key).is_file()

    async def delete(self, ref: ObjectRef) -> None:
        await asyncio.to_thread(Path(ref.key).unlink, True)

    async def metadata(self, ref: ObjectRef) -> dict[str, str]:
        if not Path(ref.key).is_file():
            raise StageFailure(ErrorCode.OBJECT_NOT_FOUND, f"{ref.uri} does not exist")
        return {}  # files carry no user metadata

    async def presign(self, ref: ObjectRef, expires_s: int) -> str | None:
        return None  # a local path has no URL to share

    async def list(self, ref: ObjectRef, limit: int | None = None) -> list[str]:
        root = Path(ref.key)
        if not root.is_dir():
            return []
        found = []
        for path in root.rglob("*"):
            if path.is_file():
                found.append(path.as_uri())
                if limit is not None and len(found) >= limit:
                    break
        return sorted(found)


class S3Store:
    def __init__(self, endpoint: str | None, access_key: str | None, secret_key: str | None,
                 region: str, timeout_s: float = 60.0):
        self._client_args = dict(endpoint_url=endpoint, aws_access_key_id=access_key,
                                 aws_secret_access_key=secret_key, region_name=region)
        self._timeout_s = timeout_s
        self._client = None
        self._client_cm = None
        self._lock = asyncio.Lock()

    async def client(self):
        async with self._lock:
            if self._client is None:
                import aioboto3
                from botocore.config import Config

                # botocore makes one attempt: retries are restyle's (streams/adapters/
                # retries.py), bounded by the stage's budget, and counted in the error.
                config = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                retries={"total_max_attempts": 1},
                                connect_timeout=min(10.0, self._timeout_s),
                                read_timeout=self._timeout_s)
                self._client_cm = aioboto3.Session().client("s3", config=config,
                                                            **self._client_args)
                self._client = await self._client_cm.__aenter__()
            return self._client

    async def close(self) -> None:
        if self._client_cm is not None:
            await self._client_cm.__aexit__(None, None, None)
            self._client = self._client_cm = None

    async def _call(self, what: str, ref: ObjectRef, operation, missing: str | None = None):
        """await operation(client), retried while the store is unavailable. A 404 is
        OBJECT_NOT_FOUND with `missing` as its sentence (None: raised as it is); any other
        permanent error is STORAGE_ERROR."""
        async def attempt():
            return await operation(await self.client())

        try:
            return await retried(attempt, s3_transient, f"{what} {ref.uri}",
                                 ErrorCode.STORAGE_UNAVAILABLE)
        except StageFailure:
            raise
        except Exception as exc:  # botocore ClientError: refused for good
            if missing is not None and _status(exc) == 404:
                if _code(exc) == "NoSuchBucket":
                    missing = f"bucket {ref.bucket!r} of {ref.uri} does not exist"
                raise StageFailure(ErrorCode.OBJECT_NOT_FOUND, missing) from None
            hint = "; a store whose certificate a private CA signed is trusted once " \
                   "AWS_CA_BUNDLE names that CA's file" if _tls_failure(exc) else ""
            raise StageFailure(ErrorCode.STORAGE_ERROR,
                               f"{what} {ref.uri} failed: {exc}{hint}") from exc

    async def get(self, ref: ObjectRef, max_bytes: int | None = None) -> bytes:
        async def read(client) -> bytes:
            response = await client.get_object(Bucket=ref.bucket, Key=ref.key)
            async with response["Body"] as body:
                # The size is in the response headers: an oversized object is refused before
                # its body is read.
                size = response.get("ContentLength") or 0
                if max_bytes is not None and size > max_bytes:
                    raise too_large(ref, size, max_bytes)
                return await body.read()

        return await self._call("reading", ref, read, f"{ref.uri} does not exist")

    async def put(self, ref: ObjectRef, data: bytes, content_type: str,
                  metadata: dict[str, str] | None = None) -> None:
        await self._call("writing", ref, lambda client: client.put_object(
            Bucket=ref.bucket, Key=ref.key, Body=data, ContentType=content_type,
            Metadata=metadata or {}))

    async def delete(self, ref: ObjectRef) -> None:
        # Deleting what is not there succeeds on S3.
        await self._call("deleting", ref, lambda client: client.delete_object(
            Bucket=ref.bucket, Key=ref.key))

    async def exists(self, ref: ObjectRef) -> bool:
        try:
            await self._call("checking", ref, lambda client: client.head_object(
                Bucket=ref.bucket, Key=ref.key), missing="")
            return True
        except StageFailure as failure:
            if failure.error.code == ErrorCode.OBJECT_NOT_FOUND:
                return False
            raise

    async def metadata(self, ref: ObjectRef) -> dict[str, str]:
        """The object's user metadata (x-amz-meta-*), keys lower-cased without the prefix."""
        response = await self._call("reading", ref, lambda client: client.head_object(
            Bucket=ref.bucket, Key=ref.key), missing=f"{ref.uri} does not exist")
        return {k.lower(): v for k, v in (response.get("Metadata") or {}).items()}

    async def presign(self, ref: ObjectRef, expires_s: int) -> str | None:
        client = await self.client()
        return await client.generate_presigned_url(
            "get_object", Params={"Bucket": ref.bucket, "Key": ref.key}, ExpiresIn=expires_s)

    async def list(self, ref: ObjectRef, limit: int | None = None) -> list[str]:
        async def listing(client) -> list[str]:
            uris = []
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=ref.bucket, Prefix=ref.key):
                uris += [f"s3://{ref.bucket}/{item['Key']}" for item in page.get("Contents", [])]
                if limit is not None and len(uris) >= limit:
                    return uris[:limit]  # a bucket of millions is not read to find that out
            return uris

        return await self._call("listing", ref, listing)

    async def ensure_bucket(self, bucket: str) -> None:
        client = await self.client()
        try:
            await client.head_bucket(Bucket=bucket)
        except Exception:
            await client.create_bucket(Bucket=bucket)


# S3's answers that mean "not now" rather than "no".
THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                       "RequestLimitExceeded", "ServiceUnavailable", "InternalError"})


def s3_transient(exc: BaseException) -> bool:
    """Worth retrying: the store did not answer (refused, reset, timed out) or answered 5xx,
    429 or a throttling code. A 4xx answer is final, and so is a TLS failure (an untrusted
    certificate; botocore's SSLError is a ConnectionError)."""
    import aiohttp
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, \
        HTTPClientError

    if _tls_failure(exc):
        return False
    if isinstance(exc, ClientError):
        status = _status(exc) or 0
        return status >= 500 or status == 429 or _code(exc) in THROTTLED
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return True
    return isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError))


def _tls_failure(exc: BaseException) -> bool:
    import ssl

    import aiohttp
    from botocore.exceptions import SSLError

    return isinstance(exc, (SSLError, ssl.SSLError, aiohttp.ClientSSLError))


def _code(exc: BaseException | None) -> str | None:
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code")


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")


# Presigned URLs kept for reuse (the most recently asked for).
PRESIGNED_KEPT = 4096


class Storage:
    """The one entry point stages use: it polices URIs and routes them to their store."""

    def __init__(self, s3: S3Store, file_roots: list[Path], presign_expiry_s: int = 3600,
                 buckets: frozenset[str] | None = None):
        """buckets: the only S3 buckets restyle reads or writes (None: any its credentials
        reach)."""
        self.s3 = s3
        self.files = FileStore()
        self.file_roots = file_roots
        self.presign_expiry_s = presign_expiry_s
        self.buckets = buckets
        # uri -> (presigned URL, when made): signing costs botocore an endpoint resolution,
        # 15% of a CPU worker's time under 300 status pages a second.
        self._presigned: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings) -> "Storage":
        s3 = S3Store(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                     settings.s3_region, settings.s3_timeout_s)
        roots = list(settings.file_roots)
        if settings.results_base.startswith("file://"):
            roots.append(Path(settings.results_base[len("file://"):]))
        return cls(s3, roots, settings.presign_expiry_s, settings.allowed_buckets)

    def _route(self, uri: str) -> tuple[FileStore | S3Store, ObjectRef]:
        ref = parse_uri(uri, self.file_roots)
        self._police_bucket(ref.bucket if ref.scheme == "s3" else None, uri)
        return (self.s3 if ref.scheme == "s3" else self.files), ref

    def police(self, uri: str) -> None:
        """Refuse a URI restyle may not touch at all (StageFailure URI_REFUSED), without
        touching it."""
        self._route(uri)

    def _police_bucket(self, bucket: str | None, uri: str) -> None:
        if bucket is not None and self.buckets is not None and bucket not in self.buckets:
            raise StageFailure(ErrorCode.URI_REFUSED,
                               f"{uri!r}: bucket {bucket!r} is not one restyle may use "
                               f"({', '.join(sorted(self.buckets))}; RESTYLE_S3_BUCKETS)")

    async def get(self, uri: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes; with max_bytes, an object above it is refused (IMAGE_TOO_LARGE)
        from its size alone."""
        store, ref = self._route(uri)
        return await store.get(ref, max_bytes)

    async def put(self, uri: str, data: bytes, content_type: str = "application/octet-stream",
                  metadata: dict[str, str] | None = None) -> None:
        store, ref = self._route(uri)
        await store.put(ref, data, content_type, metadata)

    async def exists(self, uri: str) -> bool:
        store, ref = self._route(uri)
        return await store.exists(ref)

    async def metadata(self, uri: str) -> dict[str, str]:
        store, ref = self._route(uri)
        return await store.metadata(ref)

    async def delete_prefix(self, prefix_uri: str) -> int:
        """Delete every object under a prefix (a model's adapter, crops and checkpoints);
        returns how many there were."""
        found = await self.list(prefix_uri)
        for uri in found:
            store, ref = self._route(uri)
            await store.delete(ref)
        return len(found)

    async def list(self, prefix_uri: str, limit: int | None = None) -> list[str]:
        """URIs of the objects under a prefix (s3://bucket/prefix/ or a file:// directory):
        every one, or the first `limit` (listing stops there)."""
        bucket_only = prefix_uri.startswith("s3://") and "/" not in prefix_uri[5:].rstrip("/")
        if bucket_only:  # the whole bucket: a prefix, though not an object key
            bucket = prefix_uri[5:].rstrip("/")
            self._police_bucket(bucket, prefix_uri)
            return await self.s3.list(ObjectRef("s3", bucket, ""), limit)
        store, ref = self._route(prefix_uri)
        return await store.list(ref, limit)

    async def presign(self, uri: str) -> str | None:
        """A URL that reads uri for presign_expiry_s, made again once a tenth of that has
        passed: a URL handed out is always valid for at least nine tenths of it."""
        now = time.monotonic()
        kept = self._presigned.get(uri)
        if kept is not None and now - kept[1] < self.presign_expiry_s / 10:
            self._presigned.move_to_end(uri)
            return kept[0]
        store, ref = self._route(uri)
        url = await store.presign(ref, self.presign_expiry_s)
        self._presigned[uri] = (url, now)
        self._presigned.move_to_end(uri)
        while len(self._presigned) > PRESIGNED_KEPT:
            self._presigned.popitem(last=False)
        return url

    async def open(self) -> None:
        """Make the S3 client now, not for the first object that needs it."""
        await self.s3.client()

    async def close(self) -> None:
        await self.s3.close()
