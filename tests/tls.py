"""An HTTPS endpoint whose certificate is signed by a private CA that no client trusts unless
told to: what a misconfigured S3 store, OpenSearch cluster or webhook receiver looks like to
restyle."""
from __future__ import annotations

import ssl
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from streams.stack.kafka_security import SecureListener


class Answer(BaseHTTPRequestHandler):
    def do_GET(self):  # reached only by a client that trusts the CA
        self.send_response(200)
        self.end_headers()

    do_POST = do_PUT = do_HEAD = do_GET

    def log_message(self, *_args):
        pass


@contextmanager
def https_with_a_private_ca(directory: Path):
    """Yields (url, the CA's file) of an HTTPS server on 127.0.0.1 while inside."""
    certificates = SecureListener(directory)
    certificates.issue()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.directory / "broker.pem")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_port}", certificates.cafile
    finally:
        server.shutdown()
        server.server_close()
