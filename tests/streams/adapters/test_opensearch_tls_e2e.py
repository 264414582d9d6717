"""The OpenSearch index over TLS with credentials: restyle's client verifies the cluster's
certificate against RESTYLE_OPENSEARCH_CA_CERTS and sends RESTYLE_OPENSEARCH_USER/_PASSWORD.

The real OpenSearch node of the test session serves plain HTTP (its security plugin is not in
the Maven artifacts it runs from), so an HTTPS endpoint with basic authentication stands in
front of it, as a security plugin or an ingress would: TLS with a private CA, 401 without the
right password, every request relayed to the real node."""
from __future__ import annotations

import asyncio
import base64
import ssl
import threading
import time
import uuid

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from schemas import ErrorCode, Product, StageFailure
from streams.adapters.index.opensearch import OpenSearchIndex
from streams.core.settings import Settings
from streams.stack.embedded import free_port
from streams.stack.kafka_security import SecureListener

USER, PASSWORD = "restyle", "index-secret"


class TlsFront:
    """HTTPS with basic auth in front of a plain-HTTP OpenSearch node, in its own thread."""

    def __init__(self, upstream: str, certificates: SecureListener):
        self.upstream, self.port = upstream.rstrip("/"), free_port()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certificates.directory / "broker.pem")
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        assert self.started.wait(30)
        self.url = f"https://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

        async def relay(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != expected:
                return web.json_response({"error": "unauthorized"}, status=401)
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() in ("content-type", "accept")}
            async with aiohttp.ClientSession() as session:
                async with session.request(request.method, self.upstream + request.path_qs,
                                           data=await request.read(),
                                           headers=headers) as answer:
                    return web.Response(body=await answer.read(), status=answer.status,
                                        content_type=answer.content_type)

        async def start() -> None:
            app = web.Application()
            app.router.add_route("*", "/{path:.*}", relay)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self.context).start()
            self.started.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()


@pytest.fixture(scope="module")
def tls_front(opensearch_url, tmp_path_factory):
    certificates = SecureListener(tmp_path_factory.mktemp("opensearch-tls"))
    certificates.issue()
    return TlsFront(opensearch_url, certificates), certificates


def index_with(url: str, name: str, **settings) -> OpenSearchIndex:
    return OpenSearchIndex.from_settings(Settings(opensearch_url=url, opensearch_index=name,
                                                  **settings))


def test_the_index_works_over_tls_with_the_ca_and_credentials(tls_front):
    front, certificates = tls_front
    name = f"tls-{uuid.uuid4().hex[:8]}"

    async def scenario():
        index = index_with(front.url, name, opensearch_user=USER, opensearch_password=PASSWORD,
                           opensearch_ca_certs=str(certificates.cafile))
        try:
            vectors = np.eye(2, 8, dtype=np.float32)
            assert await index.upsert([Product(product_id="sofa", caption="grey sofa"),
                                       Product(product_id="lamp", caption="brass lamp")],
                                      vectors) == {}
            hits = await index.query(vectors[0], k=1)
            assert [hit.product.product_id for hit in hits] == ["sofa"]
        finally:
            await index.drop()
            await index.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("wrong, refusal", [
    ({"opensearch_password": "guess"}, "refused restyle's credentials (RESTYLE_OPENSEARCH_USER"),
    # The private CA is not trusted by default.
    ({"opensearch_ca_certs": None}, "certificate is not trusted (RESTYLE_OPENSEARCH_CA_CERTS"),
])
def test_a_wrong_password_or_an_untrusted_certificate_is_refused(tls_front, wrong, refusal):
    front, certificates = tls_front
    settings = {"opensearch_user": USER, "opensearch_password": PASSWORD,
                "opensearch_ca_certs": str(certificates.cafile), **wrong}

    async def scenario():
        index = index_with(front.url, f"tls-{uuid.uuid4().hex[:8]}", **settings)
        try:
            with pytest.raises(StageFailure) as refused:
                await index.get("anything")
            return refused.value
        finally:
            await index.close()

    started = time.monotonic()
    error = asyncio.run(scenario()).error
    assert error.code is ErrorCode.INDEX_UNAVAILABLE and refusal in error.message
    # Refused at once: neither is a cluster that is down for a moment (no 60 s of retries).
    assert time.monotonic() - started < 10
