"""The web app, served by the status API from the installed package: the page at `/` and its
files at `/app/<name>` (plain ES modules and a stylesheet, no build step). Both are public:
they hold no data, and every call the page makes carries the user's API key.

Every URL the page uses is relative to it, so it works behind a reverse proxy that serves the
API under a path prefix (`https://example.com/restyle/` -> this worker's `/`)."""
from __future__ import annotations

from pathlib import Path

from faust import web

from streams.api.routing import error_response
from streams.core.runtime import Runtime

WEBAPP = Path(__file__).with_name("webapp")
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
                 ".png": "image/png", ".jpg": "image/jpeg", ".html": "text/html"}
# The page runs only its own scripts and styles, and talks only to the API it came from;
# images also come as data: URIs (previews) and blob: URLs (files read through the API).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; style-src 'self'; script-src 'self'; "
                               "object-src 'none'; base-uri 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
}


def files() -> dict[str, Path]:
    """The web app's files by name (one flat folder: nothing outside it can be named)."""
    return {path.name: path for path in WEBAPP.iterdir()
            if path.is_file() and path.suffix in CONTENT_TYPES}


def register(rt: Runtime) -> None:
    served = files()

    @rt.app.page("/")
    class IndexView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            return self.bytes(served["index.html"].read_bytes(),
                              content_type="text/html",
                              headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    @rt.app.page("/app/{name}")
    class AppFileView(web.View):
        async def get(self, request: web.Request, name: str) -> web.Response:
            path = served.get(name)
            if path is None:
                return error_response(self, 404, "not_found", f"no file {name!r}")
            return self.bytes(path.read_bytes(),
                              content_type=CONTENT_TYPES[path.suffix],
                              headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})
