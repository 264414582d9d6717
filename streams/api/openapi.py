"""The status API's OpenAPI 3.1 document, written from this table of operations and the
pydantic models they take and give. `restyle contracts` writes it to
schemas/contracts/openapi.json, every worker serves it at /openapi.json, and a test fails when
the workers' routes and this table differ."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import version

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas import JobState
from schemas.jobs import RecentJob
from schemas.avatars import ModelRecord
from schemas.background import BackgroundBatch
from schemas.catalog import IngestRequest, IngestState, ProductHit
from schemas.titan import TitanRequest

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    # Answers: status -> (description, a model or a JSON Schema, or None for no JSON body).
    answers: dict
    body: object = None  # a model, a JSON Schema, or ("multipart", {field: description})
    query: dict = field(default_factory=dict)  # name -> (description, required)
    public: bool = False  # no credential needed
    media: str = "application/json"
    json_body: object = None  # a multipart operation's other form: a JSON body


ERROR = {"$ref": REF.format(model="Error")}
JOB = {"$ref": REF.format(model="JobView")}
ANY = {"type": "object"}


def refused(*statuses: int) -> dict:
    """The error answers an operation can give, in the API's one error shape."""
    meaning = {400: "the request is invalid (the message says why)",
               401: "no valid credential", 403: "the credential may not do this",
               404: "unknown, or another tenant's (the same answer)",
               409: "it has already ended", 413: "the request is too large",
               429: "too many requests or jobs in flight (Retry-After says when to retry)",
               503: "the worker is starting or rebalancing, or the broker is unreachable; "
                    "retry"}
    return {status: (meaning[status], ERROR) for status in statuses}


OPERATIONS = [
    Operation("post", "/jobs", "Submit a room makeover (multipart: a photo and a style), or "
              "any one-job upload as JSON (a conditioned generation: {\"pipeline\": "
              "\"condition\", \"image\": URI, \"params\": {...}})", "jobs",
              {202: ("accepted: the job id and the stored photo's URI; follow it at "
                     "/jobs/{job_id}", ANY), **refused(400, 401, 403, 413, 429)},
              body=("multipart", {"image": "the room photo (a file)", "style": "a decor style",
                                  "params": "optional JSON object of render parameters",
                                  "job_id": "optional id", "tenant": "optional tenant"}),
              json_body={"type": "object", "required": ["pipeline"], "properties": {
                  "pipeline": {"enum": ["room_makeover", "condition"]},
                  "image": {"type": "string"}, "params": {"type": "object"},
                  "job_id": {"type": "string"}}}),
    Operation("get", "/jobs", "The caller's newest jobs, newest first", "jobs",
              {200: ("{\"jobs\": [...]}: each job's id, pipeline, batch and status (`active`"
                     " while it runs)", {"type": "object", "properties": {"jobs": {
                         "type": "array", "items": {"$ref": REF.format(model="RecentJob")}}}}),
               **refused(400, 401, 503)},
              query={"limit": ("how many (default 50)", False),
                     "active": ("true: only those still running", False)}),
    Operation("post", "/jobs/{job_id}/retry", "Submit a failed or cancelled job again under a "
              "new id", "jobs", {202: ("accepted: the new job id and `retry_of`", ANY),
                                 **refused(401, 404, 409, 429)}),
    Operation("get", "/styles", "The decor styles a makeover may name, with their prompts",
              "jobs", {200: ("the styles", ANY), **refused(401)}),
    Operation("post", "/uploads", "Store files in the tenant's folder; answers their URIs",
              "files", {201: ("the stored files' URIs", ANY), **refused(400, 401, 413)},
              body=("multipart", {"file": "a file (repeated)"})),
    Operation("get", "/files", "One of the tenant's own stored files (an input or a result)",
              "files", {200: ("the file's bytes", None), **refused(401, 404)},
              query={"uri": ("the file's URI", True)}, media="application/octet-stream"),
    Operation("get", "/jobs/{job_id}", "A job's status, progress and result", "jobs",
              {200: ("the job", JOB), **refused(401, 404, 503)}),
    Operation("delete", "/jobs/{job_id}", "Cancel a job (it ends `cancelled`)", "jobs",
              {202: ("cancelling: the job as it is now", JOB), **refused(401, 404, 409)}),
    Operation("get", "/jobs/{job_id}/events", "A job's changes as Server-Sent Events", "jobs",
              {200: ("one `data:` frame per change, the job as at /jobs/{job_id}", None),
               **refused(401, 404, 429)}, media="text/event-stream"),
    Operation("post", "/batches", "Submit a background-replacement batch", "background",
              {202: ("accepted; follow it at /batches/{batch_id}", ANY),
               **refused(400, 401, 403, 413, 429)}, body=BackgroundBatch),
    Operation("get", "/batches/{batch_id}", "A batch's status, counts and report", "background",
              {200: ("the batch", ANY), **refused(401, 404, 503)},
              query={"images": ("true: each image's line too (its status and cause)", False)}),
    Operation("delete", "/batches/{batch_id}", "Cancel a batch's pending images", "background",
              {202: ("cancelling: the batch as it is now", ANY), **refused(401, 404, 409)}),
    Operation("post", "/labels", "The objects a detector finds in an image (mask labels)",
              "background", {200: ("the image's size and each label with its box", ANY),
                             **refused(400, 401, 413)},
              body=("multipart", {"image": "the image (a file); or JSON {\"image\": URI}",
                                  "labels": "optional comma-separated labels to look for"})),
    Operation("post", "/v1/titan", "A Titan Image Generator request body (background "
              "replacement)", "background",
              {202: ("accepted: the job id to poll at /jobs/{job_id}/titan", ANY),
               **refused(400, 401, 413, 429)}, body=TitanRequest),
    Operation("get", "/jobs/{job_id}/titan", "A Titan job's answer, as Titan gives it",
              "background", {200: ("the images (base64) or the error", ANY),
                             202: ("still running", ANY), **refused(401, 404)}),
    Operation("post", "/avatars", "Train a personalized avatar model from photos", "avatars",
              {202: ("accepted: the training job and the model id", ANY),
               **refused(400, 401, 413, 429)},
              body=("multipart", {"photos": "10-15 photos of one person (files, repeated)",
                                  "subject": "optional", "class_word": "optional",
                                  "params": "optional JSON object", "job_id": "optional"})),
    Operation("get", "/models", "The tenant's avatar models", "avatars",
              {200: ("the models", {"type": "array", "items": {
                  "$ref": REF.format(model="ModelRecord")}}), **refused(401)}),
    Operation("get", "/models/{model_id}", "One avatar model", "avatars",
              {200: ("the model", ModelRecord), **refused(401, 404)}),
    Operation("delete", "/models/{model_id}", "Delete an avatar model and its files",
              "avatars", {200: ("deleted", ANY), **refused(401, 404)}),
    Operation("post", "/models/{model_id}/generate", "Images of the model's person from a "
              "prompt", "avatars", {202: ("accepted: the generation job", ANY),
                                    **refused(400, 401, 404, 429)},
              body={"type": "object", "required": ["prompt"], "properties": {
                  "prompt": {"type": "string"}, "negative_prompt": {"type": "string"},
                  "params": {"type": "object"}, "job_id": {"type": "string"}}}),
    Operation("post", "/catalog/ingests", "Add, change or delete catalog products (a key "
              "with the `catalog` scope)", "catalog",
              {202: ("published: the ingest id to follow at /catalog/ingests/{ingest_id}",
                     ANY), **refused(400, 401, 403, 503)}, body=IngestRequest),
    Operation("get", "/catalog/ingests/{ingest_id}", "A catalog ingest's progress", "catalog",
              {200: ("the ingest", IngestState), **refused(401, 404, 503)}),
    Operation("get", "/products/search", "Catalog products nearest a text", "catalog",
              {200: ("the hits, best first", {"type": "array", "items": {
                  "$ref": REF.format(model="ProductHit")}}), **refused(400, 401)},
              query={"q": ("the text", True), "k": ("how many (default 10)", False),
                     "category": ("only this category", False)}),
    Operation("get", "/products/{product_id}", "One catalog product", "catalog",
              {200: ("the product", ProductHit), **refused(401, 404)}),
    Operation("get", "/products/{product_id}/image", "A catalog product's image, read through "
              "the API", "catalog", {200: ("the image", None), **refused(401, 404)},
              media="image/*"),
    Operation("get", "/tenant", "The caller's tenant: its jobs in flight and limits", "tenancy",
              {200: ("usage", ANY), **refused(401)}),
    Operation("get", "/tenant/events", "The caller's newest jobs as Server-Sent Events: the "
              "list, then again each time one of them starts or ends", "jobs",
              {200: ("one `event: jobs` frame per change, its data the list as at /jobs", None),
               **refused(400, 401, 429, 503)}, media="text/event-stream",
              query={"limit": ("how many (default 50)", False),
                     "active": ("true: only those still running", False)}),
    Operation("get", "/livez", "Liveness: the process is worth keeping", "operations",
              {200: ("alive", ANY), 503: ("broken", ANY)}, public=True),
    Operation("get", "/readyz", "Readiness: owns partitions, no rebalance or shutdown",
              "operations", {200: ("ready", ANY), 503: ("not ready, and why", ANY)},
              public=True),
    Operation("get", "/healthz", "Readiness (the older name)", "operations",
              {200: ("ready", ANY), 503: ("not ready, and why", ANY)}, public=True),
    Operation("get", "/metrics", "Prometheus metrics (public unless RESTYLE_METRICS_PUBLIC="
              "false)", "operations", {200: ("the exposition", None)}, public=True,
              media="text/plain"),
    Operation("get", "/openapi.json", "This document", "operations",
              {200: ("the OpenAPI 3.1 document", ANY)}, public=True),
    Operation("get", "/", "The web app", "web app", {200: ("its page", None)}, public=True,
              media="text/html"),
    Operation("get", "/app/{name}", "One of the web app's files (scripts, styles)", "web app",
              {200: ("the file", None), 404: ("no such file", ERROR)}, public=True,
              media="text/javascript"),
]


def models(operations: list[Operation]) -> list[type[BaseModel]]:
    found = [JobState]
    for op in operations:
        candidates = [op.body] + [schema for _, schema in op.answers.values()]
        found += [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return list(dict.fromkeys(found + [ModelRecord, ProductHit, RecentJob]))


def schema_of(given) -> dict:
    if isinstance(given, type) and issubclass(given, BaseModel):
        return {"$ref": REF.format(model=given.__name__)}
    return given


def document(operations: list[Operation] = OPERATIONS) -> dict:
    _, definitions = models_json_schema([(m, "validation") for m in models(operations)],
                                        ref_template=REF)
    schemas = dict(definitions["$defs"])
    schemas["Error"] = {
        "type": "object", "required": ["error"], "description": "The API's one error shape.",
        "properties": {"error": {"type": "object", "required": ["code", "message"],
                                 "properties": {"code": {"type": "string"},
                                                "message": {"type": "string"}}}}}
    schemas["JobView"] = {
        "description": "A job as GET /jobs/{job_id} shows it: its state (result images with "
                       "fresh presigned `url`s, without `upload`), whether POST "
                       "/jobs/{job_id}/retry can submit it again, and, while it waits for a "
                       "GPU worker, `queue_position`.",
        "allOf": [{"$ref": REF.format(model="JobState")}],
        "properties": {"queue_position": {"type": ["integer", "null"]},
                       "retryable": {"type": "boolean"}}}
    paths: dict = {}
    for op in operations:
        entry = {"summary": op.summary, "tags": [op.tag], "operationId": operation_id(op),
                 "responses": {str(status): answer(description, schema, op.media)
                               for status, (description, schema) in op.answers.items()}}
        parameters = [{"name": name, "in": "path", "required": True,
                       "schema": {"type": "string"}}
                      for name in path_parameters(op.path)]
        parameters += [{"name": name, "in": "query", "required": required,
                        "description": description, "schema": {"type": "string"}}
                       for name, (description, required) in op.query.items()]
        if parameters:
            entry["parameters"] = parameters
        if op.public:
            entry["security"] = []
        if isinstance(op.body, tuple):
            fields = op.body[1]
            entry["requestBody"] = {"required": True, "content": {"multipart/form-data": {
                "schema": {"type": "object", "properties": {
                    name: {"type": "string", "description": description}
                    for name, description in fields.items()}}}}}
            if op.json_body is not None:
                entry["requestBody"]["content"]["application/json"] = {
                    "schema": schema_of(op.json_body)}
        elif op.body is not None:
            entry["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schema_of(op.body)}}}
        paths.setdefault(op.path, {})[op.method] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "restyle status API", "version": version("restyle"),
                 "description": "Submit and follow jobs and batches of every restyle "
                                "pipeline. Every page but the probes, /metrics and this "
                                "document needs `Authorization: Bearer <API key or JWT>`."},
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "an API key (restyle keys create) or a JWT"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }


def answer(description: str, schema, media: str) -> dict:
    if schema is None:
        return {"description": description, "content": {media: {}}}
    return {"description": description,
            "content": {"application/json": {"schema": schema_of(schema)}}}


def path_parameters(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def operation_id(op: Operation) -> str:
    words = [part.strip("{}") for part in op.path.strip("/").split("/") if part]
    return op.method + "_" + "_".join(w.replace(".", "_").replace("-", "_") for w in words)
