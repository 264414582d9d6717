"""Files through the status API, for clients that hold files rather than storage URIs (the web
app, a browser): `POST /uploads` stores photos in the caller's tenant folder and answers their
URIs, which any submission then names; `GET /files?uri=` reads back one of the tenant's own
objects (an input, a result, a control map), with the caller's credential. Through the API
rather than presigned links, so a page works the same on file:// storage, behind a reverse
proxy, and without the storage endpoint being reachable from the browser."""
from __future__ import annotations

import mimetypes
import uuid

from faust import web

from schemas import ErrorCode, StageFailure
from schemas.uris import is_under, join_uri
from streams.api.jobs import safe_file_name
from streams.api.routing import error_response
from streams.api.tenancy import caller
from streams.core.runtime import Runtime

MAX_FILES_PER_UPLOAD = 32


def owns(rt: Runtime, tenant: str, uri: str) -> bool:
    """Whether uri lies in tenant's own folder. The default tenant's folder is the storage
    base, which holds every other tenant's folder too: those are not its own."""
    others = join_uri(rt.settings.results_base, "tenants")
    mine = is_under(uri, rt.base_for(tenant))
    if tenant == rt.settings.default_tenant:
        return mine and not is_under(uri, others)
    return mine


async def read_at_most(part, limit: int) -> bytes | None:
    """A multipart part's bytes, or None as soon as it is larger than limit (never held
    whole in memory beyond it)."""
    data = bytearray()
    while chunk := await part.read_chunk():
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


async def stored_file(view, rt: Runtime, uri: str, missing: str) -> web.Response:
    """The stored object at uri as the answer, typed by its name; 404 saying `missing` when it
    is not there."""
    try:
        data = await rt.storage.get(uri, rt.settings.max_image_bytes)
    except StageFailure as failure:
        if failure.error.code is ErrorCode.OBJECT_NOT_FOUND:
            return error_response(view, 404, "not_found", missing)
        return error_response(view, 400, failure.error.code.value, failure.error.message)
    content_type = mimetypes.guess_type(uri.split("?")[0])[0] or "application/octet-stream"
    return view.bytes(data, content_type=content_type, headers={
        # Private to the caller: a shared cache must not keep one tenant's image.
        "Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"})


def register(rt: Runtime) -> None:
    app, settings = rt.app, rt.settings

    @app.page("/uploads")
    class UploadsView(web.View):
        async def post(self, request: web.Request) -> web.Response:
            """Multipart `file` fields (repeated): each is stored under the tenant's
            uploads/web/<id>/ and answered as {"uri", "name", "bytes", "content_type"}."""
            if not request.content_type.startswith("multipart/"):
                return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                      "send the files as multipart fields named 'file'")
            tenant = caller(request).tenant
            folder = join_uri(rt.base_for(tenant), "uploads", "web", uuid.uuid4().hex)
            reader = await request.multipart()
            stored = []
            while (part := await reader.next()) is not None:
                if part.name != "file" or not part.filename:
                    continue
                if len(stored) == MAX_FILES_PER_UPLOAD:
                    return error_response(self, 413, "too_many_files",
                                          f"send at most {MAX_FILES_PER_UPLOAD} files at once")
                data = await read_at_most(part, settings.max_image_bytes)
                if data is None:
                    return error_response(self, 413, ErrorCode.IMAGE_TOO_LARGE.value,
                                          f"{part.filename!r} is larger than "
                                          f"{settings.max_image_bytes} bytes "
                                          f"(RESTYLE_MAX_IMAGE_BYTES)")
                name = safe_file_name(part.filename)
                content_type = part.headers.get("Content-Type", "application/octet-stream")
                uri = join_uri(folder, f"{len(stored):02d}-{name}")
                await rt.storage.put(uri, data, content_type)
                stored.append({"uri": uri, "name": part.filename, "bytes": len(data),
                               "content_type": content_type})
            if not stored:
                return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                      "send at least one file in a multipart field 'file'")
            return self.json({"files": stored}, status=201)

    @app.page("/files")
    class FilesView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            """The object at ?uri=, if it lies in the caller's tenant folder (anything else,
            and anything missing, is the same 404: nothing can be probed)."""
            uri = request.query.get("uri", "")
            if not owns(rt, caller(request).tenant, uri):
                return error_response(self, 404, "not_found", f"no file {uri!r} here")
            return await stored_file(self, rt, uri, f"no file {uri!r} here")
