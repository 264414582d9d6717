"""Which URIs restyle will read: s3:// anywhere its credentials reach, file:// only under roots."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from schemas import ErrorCode, StageFailure


@dataclass(frozen=True)
class ObjectRef:
    scheme: str  # "s3" or "file"
    bucket: str  # empty for file://
    key: str  # the object key, or the absolute path for file://

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.scheme == "s3" else f"file://{self.key}"


def parse_uri(uri: str, file_roots: list[Path] | None = None) -> ObjectRef:
    """Parse and police an object URI; raises StageFailure(URI_REFUSED) with the reason."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        key = parsed.path.lstrip("/")
        if not parsed.netloc or not key:
            raise StageFailure(ErrorCode.URI_REFUSED, f"{uri!r} is not s3://bucket/key")
        return ObjectRef("s3", parsed.netloc, key)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StageFailure(ErrorCode.URI_REFUSED,
                               f"{uri!r} names a host; file:// URIs must be local paths")
        path = Path(unquote(parsed.path))
        if not path.is_absolute():
            raise StageFailure(ErrorCode.URI_REFUSED, f"{uri!r} is not an absolute path")
        resolved = path.resolve()
        roots = [Path(r).resolve() for r in (file_roots or [])]
        if not any(resolved == root or root in resolved.parents for root in roots):
            allowed = ", ".join(str(r) for r in roots) or "none configured"
            raise StageFailure(ErrorCode.URI_REFUSED,
                               f"{uri!r} is outside the allowed file roots ({allowed}); "
                               "set RESTYLE_FILE_ROOTS to allow a directory")
        return ObjectRef("file", "", str(resolved))
    raise StageFailure(ErrorCode.URI_REFUSED,
                       f"{uri!r}: only s3:// and file:// URIs are accepted "
                       f"(got scheme {parsed.scheme or 'none'!r})")


def object_under(prefix: str) -> str:
    """A URI standing for any object under prefix: a prefix is policed as the objects its
    listing yields will be (a bucket's root included, which is no object key itself)."""
    return prefix.rstrip("/") + "/x"


def as_input(uri: str) -> str:
    """What to police for an input that may be a prefix (ending in "/") or one object."""
    return object_under(uri) if uri.endswith("/") else uri


def tenant_base(results_base: str, tenant: str | None, default_tenant: str) -> str:
    """Where a tenant's uploads, results and reports live: the results base itself for the
    default tenant (and events that name none), `tenants/<tenant>` below it for every other,
    so no tenant's objects sit among another's."""
    if tenant is None or tenant == default_tenant:
        return results_base
    return join_uri(results_base, "tenants", tenant)


def is_under(uri: str, base: str) -> bool:
    """Whether uri lies below base, compared as storage reads it: percent-escapes decoded
    (file:// paths are unquoted before use), and no `.` or `..` segment anywhere (so nothing
    climbs out of base once a path is resolved)."""
    decoded, inside = unquote(uri), unquote(base).rstrip("/") + "/"
    if any(part in (".", "..") for part in decoded.split("/")):
        return False
    return decoded.startswith(inside)


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
