"""Catalog pages of the status API: ingest progress (routed to the ingests table's owner) and
product lookup and text search (CLIP text embedding, k-NN in the configured index)."""
from __future__ import annotations

import asyncio

from faust import web

from streams.api.routing import error_response, routed
from streams.core.runtime import Runtime
from streams.tracking import ingests
from streams.tracking.tables import Tables

MAX_K = 100


def register(rt: Runtime, tables: Tables, models, index) -> None:
    app = rt.app

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
