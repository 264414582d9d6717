"""Background replacement on the status API: submit and follow batches, detect labels for a
front end's mask picker, and the Titan-compatible endpoints."""
from __future__ import annotations

import asyncio
import base64
import time
import uuid

from faust import web
from pydantic import ValidationError

from agents.background.agents import submit_batch
from agents.background.stages import job_id_for
from agents.background.titan import titan_batch, titan_mask
from agents.models.detect import rescale_detections
from schemas import ErrorCode, StageFailure
from schemas.background import (BATCH_ID_PATTERN, BackgroundBatch, BackgroundResult, BatchEvent,
                                BatchEventKind)
from schemas.titan import TitanRequest
from schemas.uris import as_input
from streams.adapters.images import decode_image, encode_png, fit_within
from streams.adapters.outbound import UnsafeTarget
from streams.api.routing import (cancel_refused, error_response, json_body, json_model, routed,
                                 until_known)
from streams.api.tenants import TenantUsage
from streams.api.tenancy import (
    ForeignTenant,
    InvalidId,
    acting_tenant,
    caller,
    chosen_id,
    requested_by,
    sees,
)
from streams.core.runtime import Runtime, describe_validation
from streams.tracking import batches, webhooks
from streams.tracking.tables import Tables

MAX_LABEL_IMAGE_BYTES = 20 * 1024 * 1024
# The detector runs one text query per label: bound the count (and the length: longer labels
# are cut to the text encoder's 16 tokens anyway) so one request cannot hold a worker.
MAX_LABELS, MAX_LABEL_CHARS = 64, 100
# GET /batches/{id}?images=true lists this many of a batch's images at most (the report has
# them all).
MAX_LISTED_IMAGES = 1000


def check_labels(labels: list[str]) -> None:
    """Refuse (before any image is read) more labels, or longer ones, than /labels takes."""
    if len(labels) > MAX_LABELS or any(len(label) > MAX_LABEL_CHARS for label in labels):
        raise StageFailure(ErrorCode.INVALID_PARAMS, f"give at most {MAX_LABELS} labels of at "
                                                     f"most {MAX_LABEL_CHARS} characters each")


def inputs_of(batch: BackgroundBatch) -> list[str]:
    """Every URI a batch reads: its images (or prefixes) and mask images."""
    found = [batch.mask_image] if batch.mask_image else []
    for item in batch.images:
        if isinstance(item, str):
            found.append(as_input(item))
        else:
            found.append(as_input(item.uri))
            if item.mask_image:
                found.append(item.mask_image)
    return found


def register(rt: Runtime, tables: Tables, models, usage: TenantUsage) -> None:
    app, settings = rt.app, rt.settings

    @app.page("/batches")
    class BatchSubmitView(web.View):
        async def post(self, request: web.Request) -> web.Response:
            body, problem = await json_body(self, request)
            if problem:
                return problem
            body.setdefault("pipeline", "background_replace")
            try:
                body["tenant"] = acting_tenant(request, body.get("tenant"))
            except ForeignTenant as exc:
                return error_response(self, 403, "forbidden", str(exc))
            try:
                batch = BackgroundBatch.model_validate(body)
            except ValidationError as exc:
                return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                      describe_validation(exc))
            if batch.webhook is not None:
                try:  # refused now, not when the batch ends
                    webhooks.policy_of(settings).check_url(batch.webhook.url)
                    webhooks.secret_for(settings, batch.webhook.secret_name, body["tenant"])
                except UnsafeTarget as exc:
                    return error_response(self, 400, "unsafe_webhook", exc.args[0])
                except KeyError as exc:
                    return error_response(self, 400, "unknown_webhook_secret", exc.args[0])
            allowed = settings.limits_for(body["tenant"]).max_batch_images
            if len(batch.images) > allowed:
                return error_response(self, 413, "batch_too_large",
                                      f"a batch of tenant {body['tenant']!r} may list at most "
                                      f"{allowed} images (RESTYLE_TENANT_MAX_BATCH_IMAGES); "
                                      f"this one lists {len(batch.images)}")
            busy = await usage.refusal(request)
            if busy:
                return error_response(self, 429, "too_many_jobs", busy, {"Retry-After": "5"})
            try:  # what the caller's tenant may not read is refused before anything runs
                for uri in inputs_of(batch):
                    rt.check_input(uri, body["tenant"])
            except StageFailure as failure:
                return error_response(self, 400, failure.error.code.value,
                                      failure.error.message)
            try:
                batch_id = chosen_id(request, settings, batch.batch_id or uuid.uuid4().hex,
                                     "batch_id", BATCH_ID_PATTERN)
            except ForeignTenant as exc:
                return error_response(self, 403, "forbidden", str(exc))
            except InvalidId as exc:
                return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value, str(exc))
            # Through the uploads topic, like any upstream system's batch.
            await rt.publish_upload(batch_id, batch.model_copy(
                update={"batch_id": batch_id}).model_dump_json(exclude_none=True).encode())
            await until_known(app, request, f"/batches/{batch_id}")
            return self.json({"batch_id": batch_id}, status=202)

    @app.page("/batches/{batch_id}")
    class BatchView(web.View):
        @routed(rt, tables.batches)
        async def get(self, request: web.Request, batch_id: str) -> web.Response:
            state = batches.lookup(tables, batch_id)
            if state is None or not sees(request, settings, state.tenant):
                return error_response(self, 404, "not_found", f"no batch {batch_id!r} (yet)")
            body = {
                "batch_id": state.batch_id, "tenant": state.tenant, "status": state.status.value,
                "counts": batches.counts(state),
                "tolerated_failure_pct": state.tolerated_failure_pct,
                "met_threshold": state.met_threshold,
                "error": state.error.model_dump(mode="json") if state.error else None,
                "created_at": state.created_at, "finished_at": state.finished_at,
                "report": None, "notification": state.notification,
                # Finished, with the report and notification still going out.
                "reporting": state.reporting,
            }
            if state.report:
                body["report"] = {kind: await rt.storage.presign(uri) or uri
                                  for kind, uri in state.report.items()}
                # The same files by URI, for reading through GET /files (no storage access).
                body["report_uris"] = dict(state.report)
            if state.cancelled_by:
                body["cancelled_by"] = state.cancelled_by
            if request.query.get("images") == "true":
                # Each image's line as the report will have it (pending until it ends).
                body["images"] = [outcome.model_dump(mode="json") for outcome in
                                  batches.outcomes_of(tables, batch_id)[:MAX_LISTED_IMAGES]]
            return self.json(body)

        @routed(rt, tables.batches)
        async def delete(self, request: web.Request, batch_id: str) -> web.Response:
            """Cancel the batch: 202 with the batch as it is now. Its images still waiting end
            cancelled at once, those in the pipeline have their jobs cancelled, those already
            finished stay as they ended; the batch ends `cancelled` with its report and
            notification. 409 if it already ended."""
            state = batches.lookup(tables, batch_id)
            known = state is not None and sees(request, settings, state.tenant)
            refused = cancel_refused(self, "batch", batch_id, known, known and (
                state.status.value if state.finished else None))
            if refused:
                return refused
            await rt.send(rt.topics.batch_events, batch_id, BatchEvent(
                batch_id=batch_id, kind=BatchEventKind.CANCEL, at=time.time(),
                by=requested_by(request)), acknowledged=True)
            response = await self.get(request, batch_id=batch_id)
            response.set_status(202)
            return response

    @app.page("/labels")
    class LabelsView(web.View):
        """An image (multipart field `image`, or JSON {"image": URI}) -> the labels the
        detector finds, with boxes and confidence, so a user can pick what the mask keeps."""

        async def post(self, request: web.Request) -> web.Response:
            labels = list(settings.background_labels)
            try:
                if request.content_type.startswith("multipart/"):
                    form = await request.post()
                    upload = form.get("image")
                    if upload is None or not hasattr(upload, "file"):
                        return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                              "send the image as multipart field 'image'")
                    data = upload.file.read(MAX_LABEL_IMAGE_BYTES + 1)
                    if len(data) > MAX_LABEL_IMAGE_BYTES:
                        return error_response(self, 413, ErrorCode.IMAGE_TOO_LARGE.value,
                                              "the image is larger than 20 MB")
                    if form.get("labels"):
                        labels = [t.strip() for t in str(form["labels"]).split(",") if t.strip()]
                    check_labels(labels)
                    # Named as the caller named it, so the cause reads "room.jpg is not …".
                    name = getattr(upload, "filename", None) or "the uploaded file"
                    photo = await asyncio.to_thread(decode_image, data,
                                                    settings.max_image_pixels, name)
                else:
                    body, problem = await json_body(self, request)
                    if problem:
                        return problem
                    if not isinstance(body.get("image"), str):
                        return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                              "give {\"image\": URI} or a multipart image")
                    given = body.get("labels")
                    if given is not None and not (isinstance(given, list) and given and all(
                            isinstance(label, str) and label.strip() for label in given)):
                        return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                              "labels must be a non-empty list of strings")
                    labels = given or labels
                    check_labels(labels)
                    rt.check_input(body["image"], caller(request).tenant)
                    photo = await rt.image_uncached(body["image"])
            except StageFailure as failure:
                return error_response(self, 400, failure.error.code.value,
                                      failure.error.message)
            # In a thread, as the detection: shrinking a large photo takes tens of ms, which
            # every request to this worker would wait on the event loop.
            small = await asyncio.to_thread(fit_within, photo, settings.analysis_max_side)
            found = await asyncio.to_thread(models.detector.detect, small, labels,
                                            settings.detection_threshold,
                                            settings.max_detections)
            found = rescale_detections(found, photo.width / small.width)
            return self.json({"width": photo.width, "height": photo.height, "labels": [
                {"label": d.label, "confidence": round(d.score, 4),
                 "box": d.box.model_dump()} for d in found]})

    @app.page("/v1/titan")
    class TitanView(web.View):
        async def post(self, request: web.Request) -> web.Response:
            titan, problem = await json_model(self, request, TitanRequest,
                                              "ValidationException")
            if problem:
                return problem
            batch_id = uuid.uuid4().hex
            try:
                tenant = acting_tenant(request, request.headers.get("X-Restyle-Tenant"))
            except ForeignTenant as exc:
                return error_response(self, 403, "AccessDeniedException", str(exc))
            busy = await usage.refusal(request)
            if busy:  # Titan's own name for it
                return error_response(self, 429, "ThrottlingException", busy,
                                      {"Retry-After": "5"})
            try:
                batch = await titan_batch(rt.storage, settings, titan, batch_id, tenant,
                                          rt.base_for(tenant))
            except StageFailure as failure:
                return error_response(self, 400, "ValidationException", failure.error.message)
            job_id = job_id_for(batch_id, batch.images[0].uri)
            await submit_batch(rt, batch)
            await until_known(app, request, f"/jobs/{job_id}")
            return self.json({"job_id": job_id, "batch_id": batch_id}, status=202)

    @app.page("/jobs/{job_id}/titan")
    class TitanResultView(web.View):
        @routed(rt, tables.jobs)
        async def get(self, request: web.Request, job_id: str) -> web.Response:
            state = tables.board.get(job_id)
            if state is None or not sees(request, settings, state.tenant):
                return error_response(self, 404, "not_found", f"no job {job_id!r}")
            if not state.status.terminal:
                return self.json({"job_id": job_id, "status": state.status.value}, status=202)
            if state.error is not None:
                return self.json({"images": [], "error": f"{state.error.code.value}: "
                                                         f"{state.error.message}"})
            result = state.result
            if not (isinstance(result, BackgroundResult) and result.titan):
                # Titan's answer carries the images themselves: only for Titan jobs.
                return error_response(self, 404, "not_found", f"no Titan job {job_id!r}")
            images = [base64.b64encode(await rt.storage.get(image.uri)).decode()
                      for image in result.images]
            body = {"images": images, "error": None}
            if isinstance(result, BackgroundResult) and result.return_mask and \
                    result.keep_mask:
                keep = await rt.mask_image(result.keep_mask)
                mask_png = await asyncio.to_thread(
                    lambda: encode_png(titan_mask(keep, result.mask_target)))
                body["maskImage"] = base64.b64encode(mask_png).decode()
            return self.json(body)
