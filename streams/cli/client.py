"""What the CLI does as a client of a running stack: submit uploads, read job status."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from schemas.uris import join_uri
from streams.adapters.storage import Storage
from streams.core.kafka import client_options
from streams.core.settings import Settings

# How many local files a command copies into storage at once (catalog images, batch photos).
UPLOAD_CONCURRENCY = 16


def status_url(settings: Settings) -> str:
    return (settings.status_url or f"http://127.0.0.1:{settings.web_port}").rstrip("/")


async def submit(settings: Settings, image: str, style: str, params: dict | None = None,
                 job_id: str | None = None, tenant: str | None = None) -> str:
    """Store a local image (claim check) and publish its upload event; returns the job id."""
    job_id = job_id or uuid.uuid4().hex
    if "://" not in image:
        path = Path(image).resolve()
        uri = join_uri(settings.results_base, "uploads", job_id, path.name)
        storage = Storage.from_settings(settings)
        try:
            await storage.put(uri, path.read_bytes(), "application/octet-stream")
        finally:
            await storage.close()
        image = uri
    event = {"job_id": job_id, "pipeline": "room_makeover", "image": image, "style": style}
    if params:
        event["params"] = params
    if tenant:
        event["tenant"] = tenant
    await publish_one(settings, settings.topics.uploads, job_id, json.dumps(event).encode())
    return job_id


@contextlib.asynccontextmanager
async def kafka_producer(settings: Settings, **producer_options):
    """A started producer, stopped afterwards, also when it could not start (an unreachable
    broker: the command says so, without a warning about an unclosed producer)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_options(settings), **producer_options)
    try:
        await producer.start()
        yield producer
    finally:
        await producer.stop()


async def publish_one(settings: Settings, topic: str, key: str, value: bytes,
                      **producer_options) -> None:
    """Publish one message and wait until the broker has it."""
    async with kafka_producer(settings, **producer_options) as producer:
        await producer.send_and_wait(topic, value, key=key.encode())


def get_json(url: str, absent: tuple[int, ...] = (404,), api_key: str | None = None
             ) -> dict | None:
    """A JSON answer, or None when it answers with one of the `absent` codes. api_key goes
    only to the status API (a presigned link carries its own signature)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code in absent:
            return None
        raise


def api_get(settings: Settings, path: str, absent: tuple[int, ...] = (404,)) -> dict | None:
    """GET a status API path with this client's API key (RESTYLE_API_KEY, or the one `restyle
    up` wrote into endpoints.json)."""
    key = settings.api_key.get_secret_value() if settings.api_key else None
    return get_json(f"{status_url(settings)}{path}", absent, key)


def auth_headers(settings: Settings) -> dict:
    """This client's API key as the status API takes it (none configured: no header)."""
    key = settings.api_key.get_secret_value() if settings.api_key else None
    return {"Authorization": f"Bearer {key}"} if key else {}


def api_call(settings: Settings, method: str, path: str) -> tuple[int, dict]:
    """Any status API call with this client's API key: (status code, JSON body)."""
    headers = auth_headers(settings)
    request = urllib.request.Request(f"{status_url(settings)}{path}", method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except json.JSONDecodeError:
            return exc.code, {}


def get_job(settings: Settings, job_id: str) -> dict | None:
    """The job as the status API shows it, or None if the API does not know it (404)."""
    return api_get(settings, f"/jobs/{job_id}")


def wait_for_job(settings: Settings, job_id: str, timeout_s: float = 600,
                 on_change=None) -> dict:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        job = get_job(settings, job_id)
        if job is not None:
            seen = (job["status"], json.dumps(job.get("progress")))
            if seen != last and on_change:
                on_change(job)
            last = seen
            if job["status"] in ("done", "failed", "cancelled"):
                return job
        time.sleep(0.25)
    raise TimeoutError(f"job {job_id} did not finish within {timeout_s:.0f}s")


def describe(job: dict) -> str:
    lines = [f"job {job['job_id']}: {job['status']}"]
    if job.get("error"):
        lines.append(f"  cause: [{job['error']['code']}] {job['error']['message']}")
    result = job.get("result") or {}
    for image in result.get("images", []):
        lines.append(f"  image: {image['uri']}")
        if image.get("url"):
            lines.append(f"    url: {image['url']}")
    if result.get("seed") is not None:
        lines.append(f"  seed: {result['seed']}")
    for product in result.get("products", [])[:5]:
        lines.append(f"  product: {product['product_id']} ({product['score']:.2f}) "
                     f"{product['caption']}")
    return "\n".join(lines)


def run(coro):
    return asyncio.run(coro)
