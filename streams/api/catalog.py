"""Catalog pages of the status API: ingests (products published on restyle.catalog, as
`restyle catalog ingest` or an upstream system does; progress routed to the ingests table's
owner), product lookup and text search (CLIP text embedding, k-NN in the configured index)."""
from __future__ import annotations

import asyncio
import uuid

from faust import web

from agents.catalog.topics import CatalogTopics
from schemas import ErrorCode, StageFailure
from schemas.catalog import IngestRequest
from streams.api.files import stored_file
from streams.api.routing import error_response, json_model, routed
from streams.api.tenancy import caller
from streams.adapters.retries import describe
from streams.core.runtime import Runtime, settle
from streams.tracking import ingests
from streams.tracking.tables import Tables

MAX_K = 100



def register(rt: Runtime, tables: Tables, models, index) -> None:
    app = rt.app

    @app.page("/catalog/ingests")
    class IngestSubmitView(web.View):
        async def post(self, request: web.Request) -> web.Response:
            """Publish the products on restyle.catalog (scope `catalog`): 202 once the broker
            has every one, with the ingest id to follow at /catalog/ingests/{ingest_id}."""
            run, problem = await json_model(self, request, IngestRequest)
            if problem:
                return problem
            ingest_id = run.ingest_id or f"ingest-{uuid.uuid4().hex[:12]}"
            total = run.total or len(run.products)
            if total < len(run.products):
                return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                      f"total ({total}) is less than the {len(run.products)} "
                                      f"products sent")
            try:  # images the caller's tenant may not read are refused before any is sent
                for product in run.products:
                    if product.image:
                        rt.check_input(product.image, caller(request).tenant)
            except StageFailure as failure:
                return error_response(self, 400, failure.error.code.value,
                                      failure.error.message)
            topic, sent = CatalogTopics().catalog, []
            try:
                for product in run.products:
                    sent.append((topic, await rt.send(topic, product.product_id,
                                                      product.model_copy(update={
                                                          "ingest_id": ingest_id,
                                                          "ingest_total": total}))))
                await settle(sent)
            except Exception as exc:  # the broker did not take them all
                # Some may be published: the same request again, under this ingest id,
                # completes the run (a product sent twice is indexed and counted once).
                return self.json({"error": {
                    "code": ErrorCode.BROKER_UNAVAILABLE.value,
                    "message": f"publishing to {topic} failed: {describe(exc)}; send the same "
                               f"products again with ingest_id {ingest_id!r}"},
                    "ingest_id": ingest_id}, status=503, headers={"Retry-After": "5"})
            return self.json({"ingest_id": ingest_id, "published": len(sent), "total": total},
                             status=202)

    @app.page("/catalog/ingests/{ingest_id}")
    class IngestView(web.View):
        @routed(rt, tables.ingests)
        async def get(self, request: web.Request, ingest_id: str) -> web.Response:
            state = ingests.lookup(tables, ingest_id)
            if state is None:
                return error_response(self, 404, "not_found", f"no ingest {ingest_id!r} (yet)")
            body = state.model_dump(mode="json")
            body["processed"] = state.processed
            return self.json(body)

    @app.page("/products/search")
    class SearchView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            text = request.query.get("q", "").strip()
            if not text:
                return error_response(self, 400, "invalid_params", "give the text to search for as ?q=")
            try:
                k = int(request.query.get("k", "10"))
            except ValueError:
                return error_response(self, 400, "invalid_params", "k must be an integer")
            if not 1 <= k <= MAX_K:
                return error_response(self, 400, "invalid_params", f"k must be between 1 and {MAX_K}")
            vector = (await asyncio.to_thread(models.embedder.embed_texts, [text]))[0]
            hits = await index.query(vector, k=k, category=request.query.get("category"))
            return self.json({"query": text, "products": [
                {**hit.product.model_dump(mode="json"), "score": hit.score} for hit in hits]})

    @app.page("/products/{product_id}")
    class ProductView(web.View):
        async def get(self, request: web.Request, product_id: str) -> web.Response:
            product = await index.get(product_id)
            if product is None:
                return error_response(self, 404, "not_found", f"no product {product_id!r}")
            body = product.model_dump(mode="json")
            if product.image:
                body["image_url"] = await rt.storage.presign(product.image)
            return self.json(body)

    @app.page("/products/{product_id}/image")
    class ProductImageView(web.View):
        async def get(self, request: web.Request, product_id: str) -> web.Response:
            """The product's image, read through the API: the catalog is every tenant's, and
            a browser may not reach the storage a presigned link points at."""
            product = await index.get(product_id)
            if product is None or not product.image:
                return error_response(self, 404, "not_found",
                                      f"no product {product_id!r} with an image")
            return await stored_file(self, rt, product.image,
                                     f"product {product_id!r}'s image is not in storage")
