"""Webhook targets are user input: what restyle refuses to call (server-side request forgery)
and what users see of a delivery (no URL paths, no internal detail). Receivers are tiny local
HTTP servers standing in for a customer's endpoint."""
from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from schemas.background import WebhookDelivery
from streams.adapters.outbound import OutboundPolicy, UnsafeTarget, redact
from streams.core.settings import Settings
from streams.tracking.webhooks import deliver


async def no_wait(_seconds):
    pass


class Redirector:
    """A receiver that answers every POST with a redirect to the cloud metadata address."""

    def __init__(self):
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.hits += 1
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(307)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook?token=t0ps3cret"


@pytest.mark.parametrize("url", [
    "http://hooks.example.com/x",  # plain http
    "https://127.0.0.1/x", "https://[::1]/x", "https://169.254.169.254/latest/meta-data",
    "https://10.1.2.3/x", "https://192.168.0.10/x", "https://[::ffff:127.0.0.1]/x",
    "https://0.0.0.0/x", "https://user:pw@hooks.example.com/x", "ftp://hooks.example.com/x",
    "https://[64:ff9b::a00:7]:9200/",  # NAT64 for 10.0.0.7
    "https://[2002:a00:7::]/x",  # 6to4 for 10.0.0.7
    "https://[::1/x", "https://hooks.example.com:99999/x",  # unreadable: refused, not a crash
])
def test_urls_pointing_inside_are_refused_before_any_connection(url):
    with pytest.raises(UnsafeTarget):
        OutboundPolicy().check_url(url)


def test_public_https_urls_and_listed_networks_pass():
    OutboundPolicy().check_url("https://hooks.example.com/x")
    OutboundPolicy().check_url("https://8.8.8.8/x")
    inside = OutboundPolicy.of(allow_http=True, allowed_networks=["10.0.0.0/8"])
    inside.check_url("http://10.1.2.3/hook")
    with pytest.raises(UnsafeTarget):
        inside.check_url("http://127.0.0.1/hook")


def test_a_name_resolving_to_loopback_is_refused_at_connect_time():
    settings = Settings(webhook_attempts=3)
    outcome = asyncio.run(deliver(settings, WebhookDelivery(
        batch_id="b", url="https://localhost:9/hook", body={}), sleep=no_wait))
    assert outcome["status"] == "failed" and outcome["attempts"] == 1
    assert "not public" in outcome["error"]


def test_redirects_are_not_followed_and_the_url_is_shown_redacted():
    receiver = Redirector()
    settings = Settings(webhook_attempts=3, webhook_allow_http=True,
                        webhook_allowed_networks=["127.0.0.1/32"])
    try:
        outcome = asyncio.run(deliver(settings, WebhookDelivery(
            batch_id="b", url=receiver.url, body={}), sleep=no_wait))
    finally:
        receiver.server.shutdown()
    assert receiver.hits == 1 and outcome["status"] == "failed"
    assert outcome["http_status"] == 307 and "redirects are not followed" in outcome["error"]
    assert "t0ps3cret" not in str(outcome) and "/hook" not in outcome["url"]


def test_a_connection_failure_is_reported_without_internal_detail():
    settings = Settings(webhook_attempts=2, webhook_allow_http=True,
                        webhook_allowed_networks=["127.0.0.1/32"])
    outcome = asyncio.run(deliver(settings, WebhookDelivery(
        batch_id="b", url="http://127.0.0.1:9/hook", body={}), sleep=no_wait))
    assert outcome["attempts"] == 2
    assert outcome["error"] == "could not connect to the webhook host"


def test_redact_keeps_scheme_host_and_port_only():
    assert redact("https://hooks.example.com:8443/a/b?sig=x") == "https://hooks.example.com:8443/…"
    assert redact("https://hooks.example.com:99999/x") == "(an unreadable URL)"
