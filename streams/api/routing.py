"""Which worker owns a job: the one assigned the job's partition of the jobs table.

Every job-keyed topic has the same partition count and is keyed by job_id bytes with Kafka's
default partitioner (murmur2), so a job's partition is computed here without broker metadata.
A request for a job another worker owns is proxied to it.
"""
from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web as aioweb
from aiokafka.partitioner import murmur2
from pydantic import ValidationError
from yarl import URL

from schemas import ErrorCode, StageFailure
from streams.core.runtime import describe_validation, json_object


def job_partition(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def owner_url(app, table, key: str, partitions: int) -> URL | None:
    """The canonical URL of the worker owning key's partition of table, or None while nobody
    is assigned it."""
    topic = table.changelog_topic.get_topic_name()
    partition = job_partition(key, partitions)
    for url, topics in app.router.table_metadata(table.name).items():
        if partition in topics.get(topic, ()):
            return URL(url)
    return None


def is_local(app, url: URL) -> bool:
    mine = URL(str(app.conf.canonical_url))
    return (url.host, url.port) == (mine.host, mine.port)


def owned_here(rt, table, key: str) -> bool:
    """Whether this worker owns key's partition of table now."""
    url = owner_url(rt.app, table, key, rt.settings.partitions)
    return url is not None and is_local(rt.app, url)


# What a relayed answer keeps of the owner's headers: its type and what tells a client when
# to come back (a 429's or 503's Retry-After, the rate limit's state).
RELAYED_HEADERS = ("Content-Type", "Content-Disposition", "Cache-Control", "Retry-After",
                   "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


async def proxy(request, url: URL) -> aioweb.StreamResponse:
    """Relay the request to the owning worker, streaming its answer (SSE included)."""
    target = url.with_path(request.path).with_query(request.query)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # The owner authenticates the caller again: the credential travels with the request.
        headers = {"X-Restyle-Routed": "1"}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        async with session.request(request.method, target, headers=headers,
                                   data=await request.read()) as upstream:
            relayed = {name: upstream.headers[name] for name in RELAYED_HEADERS
                       if name in upstream.headers}
            response = aioweb.StreamResponse(status=upstream.status, headers={
                "Content-Type": "application/json", **relayed})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


async def json_body(view, request):
    """(the body as a JSON object, None), or (None, the 400 that says why it is not one).
    Parsed off the event loop: Titan bodies run to 32 MB."""
    raw = await request.read()
    try:
        return await asyncio.to_thread(json_object, raw), None
    except StageFailure as failure:
        return None, error_response(view, 400, ErrorCode.INVALID_JSON.value,
                                    f"the body must be a JSON object: {failure.error.message}")


async def json_model(view, request, model, code: str = ErrorCode.SCHEMA_VIOLATION.value):
    """(the body as `model`, None), or (None, the 400 that says why it is not one; code: the
    error code a validation failure answers with)."""
    body, problem = await json_body(view, request)
    if problem:
        return None, problem
    try:
        return model.model_validate(body), None
    except ValidationError as exc:
        return None, error_response(view, 400, code, describe_validation(exc))


def error_response(view, status: int, code: str, message: str, headers=None):
    """The status API's one error shape: {"error": {"code", "message"}}."""
    return view.json({"error": {"code": code, "message": message}}, status=status,
                     headers=headers)


def cancel_refused(view, kind: str, given: str, known: bool, ended: str | None):
    """The answer to a cancel that cannot be taken: 404 for what the caller cannot see
    (unknown, or another tenant's: the same answer), 409 for what has ended (ended: how);
    None when it can be cancelled."""
    if not known:
        return error_response(view, 404, "not_found", f"no {kind} {given!r}")
    if ended is not None:
        return error_response(view, 409, "already_finished",
                              f"{kind} {given!r} already ended {ended}")
    return None


def routed(rt, table, key_of=None):
    """Decorate a faust web view method taking (view, request, key): it is served on the worker
    that owns key's partition of table, and relayed there from any other worker. The key is
    the one path parameter, or key_of(request)."""
    def decorate(handler):
        async def wrapper(view, request, **path):
            # faust passes the one path parameter by its name
            key = key_of(request) if key_of else next(iter(path.values()))
            if "X-Restyle-Routed" not in request.headers:
                url = owner_url(rt.app, table, key, rt.settings.partitions)
                if url is None:
                    return error_response(view, 503, "unavailable", "partitions are being "
                                          "reassigned; retry shortly", {"Retry-After": "1"})
                if not is_local(rt.app, url):
                    return await proxy(request, url)
            return await handler(view, request, **path)
        return wrapper
    return decorate


async def until_known(app, request, path: str, timeout_s: float = 10.0) -> None:
    """Answer a POST once GET `path` knows what it created, so a client's next read never gets
    404 for the job (or batch) it just created. Asked with the caller's own credential."""
    url = f"{app.conf.canonical_url}{path}"
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": request.headers.get("Authorization", "")}
    async with aiohttp.ClientSession(headers=headers) as session:
        while time.monotonic() < deadline:
            async with session.get(url) as response:
                # 401/403: a credential that may submit but not read; nothing to wait for.
                if response.status in (200, 401, 403):
                    return
            await asyncio.sleep(0.05)
