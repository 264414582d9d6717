"""Avatars on the status API: train from uploaded photos (or URIs), list, show and delete the
caller's models, and generate with one. Models are the caller's tenant's only: another tenant's
model id answers exactly like an unknown one (404)."""
from __future__ import annotations

import json
import time
import uuid

from faust import web
from pydantic import ValidationError

from schemas import ErrorCode, StageFailure
from schemas.avatars import (
    MAX_PHOTOS,
    AvatarGenerateUpload,
    AvatarTrainUpload,
    ModelRecord,
    ModelStatus,
)
from schemas.ids import JOB_ID_PATTERN
from schemas.uris import as_input, join_uri
from streams.api.jobs import safe_file_name
from streams.api.routing import error_response, json_body, until_known
from streams.api.tenancy import (
    ForeignTenant,
    InvalidId,
    acting_tenant,
    caller,
    chosen_id,
    scoped_id,
)
from streams.api.tenants import TenantUsage
from streams.core.registry import RegistryUnavailable
from streams.core.runtime import Runtime, describe_validation, json_object


def present(record: ModelRecord) -> dict:
    """A model as its owner sees it (the photos' hashes are counted, not shown)."""
    body = record.model_dump(mode="json", exclude={"photo_hashes", "files", "uploads"})
    body["trigger"] = record.trigger
    body["photos"] = len(record.photo_hashes)
    return body


def register(rt: Runtime, usage: TenantUsage) -> None:
    app, settings = rt.app, rt.settings

    async def publish(view, request, event: dict, model: type, answer: dict):
        """Validate event as model, send it to the uploads topic, answer (202) once GET
        /jobs/{job_id} knows the job, or the 400 that says what is wrong."""
        try:
            model.model_validate(event)
        except ValidationError as exc:
            return error_response(view, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                  describe_validation(exc))
        job_id = event["job_id"]
        await rt.publish_upload(job_id, json.dumps(event).encode())
        await until_known(app, request, f"/jobs/{job_id}")
        return view.json(answer, status=202)

    async def find(view, request, given: str):
        """(record, None) for the caller's live model, else (None, the error response)."""
        try:
            model_id = scoped_id(request, settings, given)
            record = await rt.registry.find(caller(request).tenant, model_id)
        except ForeignTenant:
            record = None
        except RegistryUnavailable as exc:
            return None, error_response(view, 503, "unavailable", str(exc),
                                        {"Retry-After": "2"})
        if record is None or record.status is ModelStatus.DELETED:
            gone = " (it was deleted)" if record is not None else ""
            return None, error_response(view, 404, ErrorCode.MODEL_NOT_FOUND.value,
                                        f"no model {given!r}{gone}")
        return record, None

    async def admission(view, request, body: dict):
        """(tenant, job id, None) for a submission the caller may make now: its tenant is the
        credential's, its job id (given or drawn) in the tenant's namespace, its tenant under
        its cap of jobs in flight; else (None, None, the refusal)."""
        try:
            tenant = acting_tenant(request, body.pop("tenant", None))
            job_id = chosen_id(request, settings, str(body.pop("job_id", None) or
                                                      uuid.uuid4().hex), "job_id",
                               JOB_ID_PATTERN)
        except ForeignTenant as exc:
            return None, None, error_response(view, 403, "forbidden", str(exc))
        except InvalidId as exc:
            return None, None, error_response(view, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                              str(exc))
        busy = await usage.refusal(request)
        if busy:
            return None, None, error_response(view, 429, "too_many_jobs", busy,
                                              {"Retry-After": "5"})
        return tenant, job_id, None

    @app.page("/avatars")
    class TrainView(web.View):
        async def post(self, request: web.Request) -> web.Response:
            """Multipart: `photos` (files, repeated), optional `subject`, `class_word`,
            `params` (JSON), `job_id`. Or JSON: {"images": [URI, ...] | [prefix/], ...}."""
            multipart = request.content_type.startswith("multipart/")
            if multipart:
                form = await request.post()
                fields = {k: form.get(k) for k in ("subject", "class_word", "job_id", "tenant")
                          if isinstance(form.get(k), str) and form.get(k)}
                files = [f for f in form.getall("photos", []) if hasattr(f, "file")]
                if not files:
                    return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                          "send the photos as multipart files named 'photos'")
                if len(files) > MAX_PHOTOS:
                    return error_response(self, 413, "too_many_photos",
                                          f"send at most {MAX_PHOTOS} photos")
                try:
                    params = json_object(form["params"].encode()) \
                        if isinstance(form.get("params"), str) else {}
                except StageFailure as failure:
                    return error_response(self, 400, ErrorCode.INVALID_JSON.value,
                                          f"params: {failure.error.message}")
                body = {**fields, "params": params}
            else:
                body, problem = await json_body(self, request)
                if problem:
                    return problem
            tenant, job_id, refused = await admission(self, request, body)
            if refused:
                return refused
            if multipart:
                folder = join_uri(rt.base_for(tenant), "uploads", job_id)
                body["images"] = []
                for n, upload in enumerate(files):
                    uri = join_uri(folder, f"{n:02d}-{safe_file_name(upload.filename)}")
                    await rt.storage.put(uri, upload.file.read(),
                                         upload.content_type or "application/octet-stream")
                    body["images"].append(uri)
            else:
                try:  # what the caller's tenant may not read is refused before anything runs
                    for uri in body.get("images") or []:
                        if isinstance(uri, str):
                            rt.check_input(as_input(uri), tenant)
                except StageFailure as failure:
                    return error_response(self, 400, failure.error.code.value,
                                          failure.error.message)
            event = {**body, "job_id": job_id, "pipeline": "avatar_train", "tenant": tenant}
            return await publish(self, request, event, AvatarTrainUpload,
                                 {"job_id": job_id, "model_id": job_id})

    @app.page("/models")
    class ModelsView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            try:
                records = await rt.registry.of_tenant(caller(request).tenant)
            except RegistryUnavailable as exc:
                return error_response(self, 503, "unavailable", str(exc), {"Retry-After": "2"})
            return self.json({"models": [present(r) for r in records
                                         if r.status is ModelStatus.READY]})

    @app.page("/models/{model_id}")
    class ModelView(web.View):
        async def get(self, request: web.Request, model_id: str) -> web.Response:
            record, problem = await find(self, request, model_id)
            return problem or self.json(present(record))

        async def delete(self, request: web.Request, model_id: str) -> web.Response:
            """The model is gone for every worker at once (its record says deleted), and its
            files (adapter, face crops, checkpoints) are deleted from storage."""
            record, problem = await find(self, request, model_id)
            if problem:
                return problem
            gone = record.model_copy(update={"status": ModelStatus.DELETED,
                                             "deleted_at": time.time()})
            await rt.send(rt.topics.models, gone.key, gone, acknowledged=True)
            removed = await rt.storage.delete_prefix(record.files)
            if record.uploads:  # the person's photos, uploaded to restyle for this model
                removed += await rt.storage.delete_prefix(record.uploads)
            return self.json({**present(gone), "files_deleted": removed})

    @app.page("/models/{model_id}/generate")
    class GenerateView(web.View):
        async def post(self, request: web.Request, model_id: str) -> web.Response:
            """JSON: {"prompt", "negative_prompt"?, "params"?, "job_id"?}; `{subject}` in the
            prompt becomes the model's trigger phrase."""
            record, problem = await find(self, request, model_id)
            if problem:
                return problem
            body, problem = await json_body(self, request)
            if problem:
                return problem
            tenant, job_id, refused = await admission(self, request, body)
            if refused:
                return refused
            event = {**body, "job_id": job_id, "pipeline": "avatar_generate",
                     "model_id": record.model_id, "tenant": tenant}
            return await publish(self, request, event, AvatarGenerateUpload, {"job_id": job_id})
