"""The CLI against a remote install: only its status API (an ingress or a port-forward) and an
API key, no Kafka or S3 access. Local files travel in the request (multipart); what the API
answers is what the user sees. aiohttp (already a dependency) writes the multipart bodies."""
from __future__ import annotations

import json
import mimetypes
from pathlib import Path

import aiohttp

from schemas.catalog import MAX_INGEST_PRODUCTS, CatalogEvent
from streams.cli.background import local_images
from streams.cli.client import auth_headers, status_url
from streams.core.settings import Settings

TIMEOUT = aiohttp.ClientTimeout(total=300)


def is_remote(settings: Settings) -> bool:
    """A remote install: the status API is configured and no broker is (a `restyle up` on this
    machine, or RESTYLE_KAFKA_BOOTSTRAP, makes the CLI publish directly instead)."""
    return settings.kafka_bootstrap is None and settings.status_url is not None


class ApiRefused(Exception):
    """The status API refused the request: its status and its sentence."""


async def post_form(settings: Settings, path: str, fields: dict[str, str],
                    files: list[tuple[str, Path]]) -> dict:
    """POST a multipart form (fields, then files under their field names); the JSON answer."""
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    opened = []
    try:
        for name, file in files:
            handle = file.open("rb")
            opened.append(handle)
            form.add_field(name, handle, filename=file.name,
                           content_type=mimetypes.guess_type(file.name)[0] or
                           "application/octet-stream")
        return await _post(settings, path, data=form)
    finally:
        for handle in opened:
            handle.close()


async def post_json(settings: Settings, path: str, body: dict) -> dict:
    return await _post(settings, path, json=body)


async def _post(settings: Settings, path: str, **body) -> dict:
    headers = auth_headers(settings)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.post(f"{status_url(settings)}{path}", headers=headers,
                                **body) as response:
            text = await response.text()
            try:
                answer = json.loads(text)
            except json.JSONDecodeError:
                answer = None
            if response.status >= 400 or not isinstance(answer, dict):
                error = (answer or {}).get("error", {}) if isinstance(answer, dict) else {}
                said = f"[{error.get('code', '?')}] {error.get('message', '')}" if error \
                    else text.strip()[:200]
                raise ApiRefused(f"the status API at {response.url} answered "
                                 f"{response.status}: {said}")
            return answer


async def submit_makeover(settings: Settings, image: str, style: str, params: dict | None,
                          job_id: str | None, tenant: str | None) -> str:
    """POST /jobs with the photo; returns the job id."""
    if "://" in image:
        raise ApiRefused("a remote install takes a local photo (its storage is not this "
                         "machine's to name): give a file path")
    fields = {"style": style}
    if params:
        fields["params"] = json.dumps(params)
    if job_id:
        fields["job_id"] = job_id
    if tenant:
        fields["tenant"] = tenant
    answer = await post_form(settings, "/jobs", fields, [("image", Path(image).resolve())])
    return answer["job_id"]


async def submit_training(settings: Settings, photos: list[Path], subject: str | None,
                          class_word: str | None, params: dict, job_id: str | None) -> str:
    """POST /avatars with the photos; returns the job id (the model's id)."""
    fields = {"params": json.dumps(params)}
    for name, value in (("subject", subject), ("class_word", class_word), ("job_id", job_id)):
        if value:
            fields[name] = value
    answer = await post_form(settings, "/avatars", fields, [("photos", p) for p in photos])
    return answer["job_id"]


# POST /uploads takes at most this many files at once (streams/api/files.py).
UPLOAD_FILES_PER_REQUEST = 32


async def upload_files(settings: Settings, paths: list[Path]) -> list[str]:
    """Store local files in the tenant's folder (POST /uploads, a few requests of up to 32);
    their URIs, in the same order."""
    uris: list[str] = []
    for start in range(0, len(paths), UPLOAD_FILES_PER_REQUEST):
        answer = await post_form(settings, "/uploads", {}, [
            ("file", path) for path in paths[start:start + UPLOAD_FILES_PER_REQUEST]])
        uris += [stored["uri"] for stored in answer["files"]]
    return uris


async def submit_batch(settings: Settings, sources: list[str], fields: dict,
                       batch_id: str | None) -> str:
    """Upload the local photos, then POST /batches naming them and any s3:// sources as
    given; returns the batch id."""
    images: list[dict] = []
    for source in sources:
        if "://" in source:
            images.append({"uri": source})
            continue
        found = local_images(source)
        uris = await upload_files(settings, [path for path, _ in found])
        images += [{"uri": uri, "name": name} for uri, (_, name) in zip(uris, found)]
    if not images:
        raise FileNotFoundError(f"no images in {', '.join(sources)}")
    body = {**fields, "images": images}
    if batch_id:
        body["batch_id"] = batch_id
    return (await post_json(settings, "/batches", body))["batch_id"]


async def publish_products(settings: Settings, ingest_id: str,
                           events: list[CatalogEvent]) -> None:
    """POST /catalog/ingests, in parts of up to MAX_INGEST_PRODUCTS, all under ingest_id and
    the run's whole count (the key needs the `catalog` scope)."""
    for start in range(0, len(events), MAX_INGEST_PRODUCTS):
        part = events[start:start + MAX_INGEST_PRODUCTS]
        await post_json(settings, "/catalog/ingests", {
            "ingest_id": ingest_id, "total": len(events),
            "products": [event.model_dump(mode="json", exclude_none=True,
                                          exclude={"ingest_id", "ingest_total"})
                         for event in part]})


async def read_file_json(settings: Settings, uri: str) -> dict | None:
    """A JSON file of the tenant's (a batch report) read through GET /files."""
    headers = auth_headers(settings)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(f"{status_url(settings)}/files", params={"uri": uri},
                               headers=headers) as response:
            return json.loads(await response.read()) if response.status == 200 else None


async def submit_generation(settings: Settings, model_id: str, prompt: str,
                            negative_prompt: str | None, params: dict,
                            job_id: str | None) -> str:
    body = {"prompt": prompt, "params": params}
    if negative_prompt is not None:
        body["negative_prompt"] = negative_prompt
    if job_id:
        body["job_id"] = job_id
    answer = await post_json(settings, f"/models/{model_id}/generate", body)
    return answer["job_id"]
