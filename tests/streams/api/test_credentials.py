"""Credentials as the gate sees them: API keys (minted, hashed, revoked) and JWTs verified by
PyJWT with pinned algorithms, HS256 with a secret, RS256 with a PEM key, ES256 from a JWKS URL
served by a local HTTP server."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from schemas.credentials import Scope
from streams.api.auth.api_keys import digest, key_id_of, mint, verifies
from streams.api.auth.jwts import InvalidToken, JwtVerifier
from streams.api.auth.keyring import KeyRing
from streams.core.settings.auth import AuthSettings

ISSUER, AUDIENCE = "https://id.example.test", "restyle"
SECRET = "a-long-hmac-secret-for-tests-only-0123456789"


def claims(**overrides) -> dict:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "tenant": "acme",
            "iat": now, "nbf": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def verify(settings: AuthSettings, token: str):
    return asyncio.run(JwtVerifier(settings).verify(token))


def hs256() -> AuthSettings:
    return AuthSettings(jwt_algorithms=["HS256"], jwt_secret=SECRET, jwt_issuer=ISSUER,
                        jwt_audience=AUDIENCE, jwt_leeway_s=0)


# --- API keys -------------------------------------------------------------------------------

def test_a_minted_key_is_verified_by_its_record_which_holds_only_a_hash():
    key, record = mint("acme", now=1.0, name="ci")
    assert key.startswith("rsk_") and key_id_of(key) == record.key_id
    assert key not in record.model_dump_json() and record.sha256 == digest(key)
    assert verifies(record, key)
    assert record.scopes == [Scope.READ, Scope.WRITE]


def test_a_wrong_revoked_or_malformed_key_does_not_verify():
    key, record = mint("acme", now=1.0)
    other, _ = mint("acme", now=1.0)
    assert not verifies(record, other)
    assert not verifies(record.model_copy(update={"revoked_at": 2.0}), key)
    assert not verifies(None, key)
    for malformed in ("rsk_", "rsk_zz_" + "a" * 43, key[:-1], key + "x", "Bearer " + key):
        assert key_id_of(malformed) is None


def test_a_tenant_is_a_plain_name():
    for bad in ("", "../etc", "a/b", "x" * 65, "tenant\n"):
        with pytest.raises(ValidationError):
            mint(bad, now=1.0)


def test_the_key_ring_keeps_the_latest_record_and_skips_garbage():
    ring = KeyRing({"bootstrap_servers": "unused:9092"}, "keys")
    key, record = mint("acme", now=1.0)
    ring.apply(record.key_id.encode(), record.model_dump_json().encode())
    assert verifies(ring.get(record.key_id), key)
    revoked = record.model_copy(update={"revoked_at": 5.0})
    ring.apply(record.key_id.encode(), revoked.model_dump_json().encode())
    assert not verifies(ring.get(record.key_id), key)
    ring.apply(b"x", b"{not json")  # skipped, never fatal
    ring.apply(record.key_id.encode(), None)  # a tombstone forgets the key
    assert ring.get(record.key_id) is None


# --- JWT settings ---------------------------------------------------------------------------

@pytest.mark.parametrize("given, complaint", [
    ({"jwt_algorithms": ["none"]}, "unsupported"),
    ({"jwt_algorithms": ["HS256", "RS256"], "jwt_secret": SECRET, "jwt_public_key": "x"},
     "mixes"),
    ({"jwt_algorithms": ["HS256"]}, "RESTYLE_JWT_SECRET"),
    ({"jwt_algorithms": ["RS256"]}, "RESTYLE_JWT_PUBLIC_KEY"),
    ({"jwt_algorithms": ["HS256"], "jwt_secret": SECRET}, "RESTYLE_JWT_ISSUER"),
])
def test_jwt_settings_that_would_accept_too_much_are_refused(given, complaint):
    with pytest.raises(ValidationError, match=complaint):
        AuthSettings(**given)


# --- JWTs -----------------------------------------------------------------------------------

def test_a_valid_hs256_token_names_the_tenant_and_scopes():
    token = jwt.encode(claims(scope="read profile"), SECRET, algorithm="HS256")
    principal = verify(hs256(), token)
    assert principal.tenant == "acme" and principal.scopes == {Scope.READ}
    assert principal.credential == "jwt user-1"


def test_a_token_without_a_scope_claim_may_read_and_write():
    principal = verify(hs256(), jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert principal.scopes == {Scope.READ, Scope.WRITE}


@pytest.mark.parametrize("name, token, complaint", [
    ("forged", lambda: jwt.encode(claims(), "another-secret-of-enough-length-0123456789",
                                  algorithm="HS256"), "Signature verification failed"),
    ("expired", lambda: jwt.encode(claims(exp=int(time.time()) - 10), SECRET,
                                   algorithm="HS256"), "expired"),
    ("not yet valid", lambda: jwt.encode(claims(nbf=int(time.time()) + 600), SECRET,
                                         algorithm="HS256"), "not yet valid"),
    ("no expiry", lambda: jwt.encode(claims(exp=None), SECRET, algorithm="HS256"), "exp"),
    ("other audience", lambda: jwt.encode(claims(aud="billing"), SECRET, algorithm="HS256"),
     "(?i)audience"),
    ("other issuer", lambda: jwt.encode(claims(iss="https://evil.test"), SECRET,
                                        algorithm="HS256"), "(?i)issuer"),
    ("alg none", lambda: jwt.encode(claims(), None, algorithm="none"), "alg"),
    ("unpinned HS512", lambda: jwt.encode(claims(), SECRET, algorithm="HS512"), "alg"),
    ("no tenant", lambda: jwt.encode(claims(tenant=None), SECRET, algorithm="HS256"),
     "tenant"),
    ("a path as tenant", lambda: jwt.encode(claims(tenant="../b"), SECRET, algorithm="HS256"),
     "tenant"),
    ("garbage", lambda: "not.a.jwt", "refused"),
])
def test_tokens_that_prove_nothing_are_refused_with_the_reason(name, token, complaint):
    with pytest.raises(InvalidToken, match=complaint):
        verify(hs256(), token())


def pem(private) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_rs256_verifies_with_a_pem_key_from_a_file_and_refuses_the_hmac_confusion(tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_file = tmp_path / "idp.pem"
    public_file.write_text(pem(private))
    settings = AuthSettings(jwt_algorithms=["RS256"], jwt_public_key=str(public_file),
                            jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    assert verify(settings, jwt.encode(claims(), private, algorithm="RS256")).tenant == "acme"
    # The classic confusion: an HS256 token "signed" with the public key as the secret.
    # (Built by hand: PyJWT itself refuses to sign with a public key as an HMAC secret.)
    forged = hmac_token(claims(), pem(private).encode())
    with pytest.raises(InvalidToken, match="alg"):
        verify(settings, forged)


def hmac_token(payload: dict, secret: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = json.dumps({"alg": "HS256", "typ": "JWT"}).encode()
    signing_input = f"{b64(header)}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


class JwksServer:
    """A stand-in identity provider (outside the system under test): serves one JWKS."""

    def __init__(self, jwks: dict):
        body = json.dumps(jwks).encode()
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/.well-known/jwks.json"


@pytest.fixture
def es256_provider():
    """An identity provider's ES256 key (kid k1), its JWKS served, and settings reading it."""
    private = ec.generate_private_key(ec.SECP256R1())
    public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    server = JwksServer({"keys": [{**public_jwk, "kid": "k1", "use": "sig", "alg": "ES256"}]})
    settings = AuthSettings(jwt_algorithms=["ES256"], jwt_jwks_url=server.url,
                            jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    yield private, server, settings
    server.server.shutdown()


def test_es256_verifies_with_the_key_a_jwks_url_publishes(es256_provider):
    private, _, settings = es256_provider
    token = jwt.encode(claims(tenant="globex"), private, algorithm="ES256",
                       headers={"kid": "k1"})
    assert verify(settings, token).tenant == "globex"
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidToken):
        verify(settings, jwt.encode(claims(), stranger, algorithm="ES256",
                                    headers={"kid": "k1"}))


def test_made_up_key_ids_cannot_turn_into_a_flood_of_jwks_fetches(es256_provider):
    private, server, settings = es256_provider
    verifier = JwtVerifier(settings)
    for n in range(20):
        forged = jwt.encode(claims(), private, algorithm="ES256", headers={"kid": f"x{n}"})
        with pytest.raises(InvalidToken):
            asyncio.run(verifier.verify(forged))
    assert server.fetches <= 3  # the first set, and one refresh for an unknown id
    good = jwt.encode(claims(), private, algorithm="ES256", headers={"kid": "k1"})
    assert asyncio.run(verifier.verify(good)).tenant == "acme"
