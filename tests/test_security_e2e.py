"""The status API attacked the way an outsider would, on the running embedded stack: no
credentials, made-up and revoked keys, forged, expired and wrong-algorithm JWTs, one tenant
reading another's work, a body naming another tenant, faust's own pages, a tenant over its
limits, webhooks aimed inside the network. Each answer is the documented status and error
shape, and a valid batch submitted among them is still done."""
from __future__ import annotations

import json
import time
import urllib.request
import uuid

import jwt
import pytest

from schemas.credentials import Scope
from streams.api.auth.keystore import create_key, revoke_key
from streams.cli.client import run
from tests.conftest import JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET
from tests.forms import multipart

# The whole point of these cases is the HTTP gate, not the broker: run them on one.
pytestmark = pytest.mark.usefixtures("first_broker_only", "exits_before")


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def token(**overrides) -> str:
    now = int(time.time())
    claims = {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": "someone", "tenant": "jwt-co",
              "iat": now, "nbf": now, "exp": now + 300, **overrides}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, JWT_SECRET,
                      algorithm="HS256")


def assert_refused(answer, status: int, code: str) -> None:
    got, body = answer
    assert got == status, body
    assert body["error"]["code"] == code and body["error"]["message"]


def submit_batch(e2e, caller: str, photo: bytes, **fields) -> tuple[int, dict]:
    # A named tenant's inputs live in its own storage (or its own buckets).
    uri = e2e.put_object(f"tenants/{caller}/inputs/{uuid.uuid4().hex[:8]}/room.jpg", photo)
    return e2e.post_json("/batches", {"images": [{"uri": uri}], "prompt": "a quiet garden",
                                      "params": {"seed": 1}, **fields}, tenant=caller)


def finished_batch(e2e, batch_id: str, tenant: str, timeout_s: float) -> dict:
    """The batch as its tenant sees it once it has ended and its report is out."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, batch = e2e.get(f"/batches/{batch_id}", tenant=tenant)
        if status == 200 and batch["status"] != "running" and not batch["reporting"]:
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)


def test_every_page_but_health_needs_a_credential(e2e):
    for method, path in [("GET", "/jobs/x"), ("GET", "/jobs/x/events"), ("GET", "/batches/x"),
                         ("GET", "/products/search?q=sofa"), ("GET", "/catalog/ingests/x"),
                         ("POST", "/batches"), ("POST", "/jobs"), ("POST", "/v1/titan"),
                         ("POST", "/labels"), ("GET", "/jobs/x/titan")]:
        status, body = e2e.request(method, path, data=b"{}" if method == "POST" else None,
                                   authorized=False)
        assert (status, body["error"]["code"]) == (401, "unauthorized"), (method, path)
    request = urllib.request.Request(e2e.status_url + "/jobs/x")
    try:
        urllib.request.urlopen(request)
    except urllib.error.HTTPError as refused:
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert e2e.request("GET", "/healthz", authorized=False)[0] == 200
    with urllib.request.urlopen(e2e.status_url + "/metrics") as response:  # public by default
        assert b"restyle_" in response.read()


@pytest.mark.parametrize("credential", [
    "", "Basic dXNlcjpwYXNz", "Bearer ", "Bearer rsk_nonsense",
    "Bearer rsk_0123456789ab_" + "A" * 43,  # well formed, never issued
    "Bearer " + "x" * 4_000, "Bearer rsk_" + "\u00e9" * 100,
])
def test_made_up_api_keys_are_refused(e2e, credential):
    assert_refused(e2e.request("GET", "/jobs/x", headers={"Authorization": credential},
                               authorized=False), 401, "unauthorized")


def test_an_oversized_header_is_refused_before_any_page_runs(e2e):
    # aiohttp's own limit (8 KiB per header line): a plain 400, and the worker carries on.
    status, _ = e2e.request("GET", "/jobs/x", headers={"Authorization": "Bearer " + "x" * 10_000},
                            authorized=False)
    assert status == 400
    assert e2e.request("GET", "/healthz", authorized=False)[0] == 200


def test_a_revoked_key_stops_working_and_a_new_key_works_at_once(e2e):
    settings = e2e.client_settings
    key, record = run(create_key(settings, "short-lived"))
    # Usable on the very next request: the worker catches up with the api-keys topic on a miss.
    assert e2e.request("GET", "/jobs/none", headers=bearer(key), authorized=False)[0] == 404
    run(revoke_key(settings, record.key_id))
    deadline = time.monotonic() + 10
    while e2e.request("GET", "/jobs/none", headers=bearer(key), authorized=False)[0] != 401:
        assert time.monotonic() < deadline, "the revoked key was still accepted after 10 s"
        time.sleep(0.2)


def test_a_read_only_key_cannot_submit(e2e, room_photos):
    key, _ = run(create_key(e2e.client_settings, "reader", scopes=(Scope.READ,)))
    assert_refused(e2e.request("POST", "/batches", data=b"{}", headers={
        **bearer(key), "Content-Type": "application/json"}, authorized=False), 403, "forbidden")
    assert e2e.request("GET", "/jobs/none", headers=bearer(key), authorized=False)[0] == 404


@pytest.mark.parametrize("name, bad", [
    ("forged", lambda: jwt.encode({"tenant": "jwt-co", "iss": JWT_ISSUER, "aud": JWT_AUDIENCE,
                                   "exp": int(time.time()) + 60}, "not-the-secret-" * 3,
                                  algorithm="HS256")),
    ("expired", lambda: token(exp=int(time.time()) - 60)),
    ("not yet valid", lambda: token(nbf=int(time.time()) + 600)),
    ("wrong audience", lambda: token(aud="someone-else")),
    ("wrong issuer", lambda: token(iss="https://attacker.test")),
    ("wrong algorithm", lambda: jwt.encode({"tenant": "jwt-co", "iss": JWT_ISSUER,
                                            "aud": JWT_AUDIENCE, "exp": int(time.time()) + 60},
                                           JWT_SECRET, algorithm="HS512")),
    ("alg none", lambda: jwt.encode({"tenant": "jwt-co", "iss": JWT_ISSUER,
                                     "aud": JWT_AUDIENCE, "exp": int(time.time()) + 60},
                                    None, algorithm="none")),
    ("no tenant", lambda: token(tenant=None)),
])
def test_jwts_that_prove_nothing_are_refused(e2e, name, bad):
    assert_refused(e2e.request("GET", "/jobs/x", headers=bearer(bad()), authorized=False),
                   401, "unauthorized")


def test_a_valid_jwt_acts_for_its_tenant_with_its_scopes(e2e):
    assert e2e.request("GET", "/jobs/none", headers=bearer(token()), authorized=False)[0] == 404
    assert_refused(e2e.request("POST", "/batches", data=b"{}", headers={
        **bearer(token(scope="read")), "Content-Type": "application/json"},
        authorized=False), 403, "forbidden")


def test_oversized_bodies_and_too_many_labels_are_refused_with_a_code(e2e):
    # Above the 32 MB request limit: refused by the server before any page reads it.
    status, _ = e2e.request("POST", "/batches", data=b"{" + b" " * (33 * 1024 * 1024) + b"}",
                            headers={"Content-Type": "application/json"})
    assert status == 413
    status, body = e2e.post_json("/labels", {"image": "s3://restyle/x.png",
                                             "labels": [f"thing {n}" for n in range(500)]})
    assert (status, body["error"]["code"]) == (400, "invalid_params")
    assert "at most 64 labels" in body["error"]["message"]


def test_faust_built_in_pages_are_not_served(e2e):
    # ("/" is restyle's web app: tests/streams/api/test_web_api_e2e.py.)
    for path in ("/router/", "/table/", "/table/restyle-jobs/", "/graph/", "/stats/",
                 "/performance/"):
        status, _ = e2e.get(path)
        assert status == 404, path


def test_a_tenant_sees_only_its_own_batches_jobs_streams_and_titan_results(e2e, room_photos):
    photo = room_photos[2].read_bytes()
    status, created = submit_batch(e2e, "tenant-a", photo)
    assert status == 202, created
    batch_id = created["batch_id"]
    batch = finished_batch(e2e, batch_id, "tenant-a", 240)
    assert batch["tenant"] == "tenant-a" and batch["counts"]["succeeded"] == 1
    report = json.loads(urllib.request.urlopen(batch["report"]["json"]).read())
    job_id = report["images"][0]["job_id"]
    # Its outputs (and the report) are under its own storage prefix.
    assert report["images"][0]["outputs"][0].startswith("s3://restyle/tenants/tenant-a/")
    assert "/tenants/tenant-a/batches/" in batch["report"]["json"]
    assert e2e.get(f"/jobs/{job_id}", tenant="tenant-a")[1]["status"] == "done"
    # Titan's answer (the images inline) is only for Titan jobs, even to their owner.
    status, body = e2e.get(f"/jobs/{job_id}/titan", tenant="tenant-a")
    assert status == 404 and "no Titan job" in body["error"]["message"]

    # Tenant B (and the default tenant) get exactly what an unknown id gets.
    unknown = e2e.get("/batches/no-such-batch", tenant="tenant-b")
    for tenant in ("tenant-b", None):
        for path in (f"/batches/{batch_id}", f"/jobs/{job_id}", f"/jobs/{job_id}/events",
                     f"/jobs/{job_id}/titan"):
            status, body = e2e.get(path, tenant=tenant)
            assert status == 404 and body["error"]["code"] == unknown[1]["error"]["code"], path


def test_a_body_naming_another_tenant_is_refused(e2e, room_photos):
    assert_refused(submit_batch(e2e, "tenant-a", room_photos[3].read_bytes(),
                                tenant="tenant-b"), 403, "forbidden")
    # Naming its own tenant is allowed (and changes nothing).
    status, created = submit_batch(e2e, "tenant-a", room_photos[3].read_bytes(),
                                   tenant="tenant-a")
    assert status == 202, created


def test_a_tenant_over_its_rate_gets_429_with_retry_after_and_others_carry_on(e2e):
    answers = [e2e.request("POST", "/batches", data=b"{}", tenant="throttled",
                           headers={"Content-Type": "application/json"}) for _ in range(4)]
    assert [status for status, _ in answers] == [400, 400, 400, 429]
    assert_refused(answers[-1], 429, "rate_limited")
    request = urllib.request.Request(e2e.status_url + "/batches", data=b"{}", method="POST",
                                     headers={**e2e.auth("throttled"),
                                              "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request)
    except urllib.error.HTTPError as refused:
        assert refused.code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["RateLimit-Limit"] == "3"
        assert refused.headers["RateLimit-Remaining"] == "0"
    # Another tenant is not held back by it.
    assert e2e.request("POST", "/batches", data=b"{}", tenant="tenant-b",
                       headers={"Content-Type": "application/json"})[0] == 400


def test_a_batch_larger_than_the_tenant_may_send_is_refused_whole(e2e):
    images = [{"uri": f"s3://{e2e.bucket}/big/{n}.png"} for n in range(3)]
    status, body = e2e.post_json("/batches", {"images": images, "prompt": "x"},
                                 tenant="small-batches")
    assert_refused((status, body), 413, "batch_too_large")
    assert "at most 2 images" in body["error"]["message"]


@pytest.mark.parametrize("webhook, code", [
    ({"url": "http://169.254.169.254/latest/meta-data/"}, "unsafe_webhook"),
    ({"url": "https://10.0.0.7:9200/_search"}, "unsafe_webhook"),
    ({"url": "https://hooks.example.com/x", "secret_name": "tests"}, "unknown_webhook_secret"),
])
def test_a_webhook_pointing_inside_or_borrowing_a_secret_is_refused_at_submission(
        e2e, room_photos, webhook, code):
    # (The test stack lets webhooks reach 127.0.0.1 over http, for its own receivers; the
    # cloud metadata address and other private networks stay refused.)
    status, body = submit_batch(e2e, "tenant-a", room_photos[5].read_bytes(), webhook=webhook)
    assert_refused((status, body), 400, code)


def test_ids_a_tenant_chooses_live_in_its_own_namespace(e2e, room_photos):
    photo = room_photos[6].read_bytes()
    status, mine = submit_batch(e2e, "tenant-a", photo, batch_id="order-7")
    assert status == 202 and mine["batch_id"] == "tenant-a:order-7"
    # Another tenant choosing the same id gets its own batch, not a view of A's...
    status, theirs = submit_batch(e2e, "tenant-b", photo, batch_id="order-7")
    assert status == 202 and theirs["batch_id"] == "tenant-b:order-7"
    assert e2e.get("/batches/tenant-b:order-7", tenant="tenant-b")[0] == 200
    # ...and cannot take an id in A's namespace.
    assert_refused(submit_batch(e2e, "tenant-b", photo, batch_id="tenant-a:order-8"), 403,
                   "forbidden")


def test_a_tenant_cannot_feed_files_outside_its_storage_into_its_jobs(e2e, room_photos):
    theirs = e2e.put_object(f"tenants/tenant-a/uploads/{uuid.uuid4().hex[:8]}/room.jpg",
                            room_photos[11].read_bytes())
    for images in ([{"uri": theirs}], ["s3://restyle/tenants/tenant-a/"],
                   ["s3://restyle/uploads/"],  # the default tenant's storage
                   [{"uri": "s3://restyle/tenants/tenant-b/../tenant-a/x.jpg"}],
                   [{"uri": "s3://restyle/tenants/tenant-b/x.jpg", "mask_image": theirs}]):
        status, body = e2e.post_json("/batches", {"images": images, "prompt": "a garden"},
                                     tenant="tenant-b")
        assert (status, body["error"]["code"]) == (400, "uri_refused"), images
        assert "outside this tenant's storage" in body["error"]["message"] or \
            "climbs out" in body["error"]["message"]
    # Labels are not read from it either.
    assert_refused(e2e.post_json("/labels", {"image": theirs}, tenant="tenant-b"), 400,
                   "uri_refused")


def test_a_tenant_at_its_cap_of_jobs_in_flight_gets_429_until_they_finish(e2e, room_photos):
    photo = room_photos[13].read_bytes()
    uris = [e2e.put_object(f"tenants/capped/inputs/{uuid.uuid4().hex[:8]}/{n}.jpg", photo)
            for n in range(6)]
    status, created = e2e.post_json("/batches", {"images": uris, "prompt": "a garden"},
                                    tenant="capped")
    assert status == 202, created
    deadline = time.monotonic() + 60
    while e2e.get("/tenant", tenant="capped")[1]["jobs_in_flight"] < 1:
        assert time.monotonic() < deadline, "the batch's jobs never showed as in flight"
        time.sleep(0.1)
    status, body = e2e.post_json("/batches", {"images": uris[:1], "prompt": "more"},
                                 tenant="capped")
    assert_refused((status, body), 429, "too_many_jobs")
    assert "RESTYLE_TENANT_MAX_JOBS 1" in body["error"]["message"]
    # A photo sent with a refused job is not kept.
    refused_id = f"capped-{uuid.uuid4().hex[:8]}"
    form, headers = multipart({"room.jpg": photo}, {"style": "cozy", "job_id": refused_id},
                              file_field="image")
    assert_refused(e2e.request("POST", "/jobs", form, headers, tenant="capped"), 429,
                   "too_many_jobs")
    stored_under = f"tenants/capped/uploads/capped:{refused_id}/"  # the job's id, namespaced
    assert e2e.s3.list_objects_v2(Bucket=e2e.bucket, Prefix=stored_under)["KeyCount"] == 0
    # Another tenant is not held back; and once the batch is done, the tenant may go on.
    assert e2e.get("/tenant", tenant="tenant-b")[1]["limits"]["max_jobs"] == 100
    finished_batch(e2e, created["batch_id"], "capped", 240)
    deadline = time.monotonic() + 30
    while e2e.get("/tenant", tenant="capped")[1]["jobs_in_flight"] > 0:
        assert time.monotonic() < deadline, "the finished jobs still count"
        time.sleep(0.2)
    # The same photo, sent now, is admitted and kept where the refused one was not.
    status, again = e2e.request("POST", "/jobs", form, headers, tenant="capped")
    assert status == 202, again
    assert again["image"].endswith(f"{stored_under}room.jpg")
    assert e2e.s3.list_objects_v2(Bucket=e2e.bucket, Prefix=stored_under)["KeyCount"] == 1
    e2e.request("DELETE", f"/jobs/{again['job_id']}", tenant="capped")  # not left running


def test_a_tenant_holds_at_most_its_number_of_progress_streams(e2e, room_photos):
    import threading

    job_id = f"streamer:{uuid.uuid4().hex[:8]}"
    e2e.publish({"job_id": job_id, "pipeline": "room_makeover", "tenant": "streamer",
                 "image": e2e.put_object(f"tenants/streamer/{job_id[9:]}.jpg",
                                         room_photos[14].read_bytes()),
                 "style": "modern"}, key=job_id.encode())
    deadline = time.monotonic() + 60
    while e2e.get(f"/jobs/{job_id}", tenant="streamer")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    opened, events = threading.Event(), []

    def follow():  # the tenant's one allowed stream, read to its end
        request = urllib.request.Request(f"{e2e.status_url}/jobs/{job_id}/events",
                                         headers=e2e.auth("streamer"))
        with urllib.request.urlopen(request, timeout=180) as stream:
            opened.set()
            events.append(stream.read().decode())

    reader = threading.Thread(target=follow)
    reader.start()
    assert opened.wait(30)
    status, body = e2e.get(f"/jobs/{job_id}/events", tenant="streamer")
    assert_refused((status, body), 429, "too_many_streams")
    reader.join(180)
    assert "event: done" in events[0] or "event: failed" in events[0]
    # Its stream ended: the tenant may open another (the job is finished: one event).
    request = urllib.request.Request(f"{e2e.status_url}/jobs/{job_id}/events",
                                     headers=e2e.auth("streamer"))
    with urllib.request.urlopen(request, timeout=30) as stream:
        assert stream.read().decode().startswith("event: ")


def test_after_every_attack_the_workers_live_and_a_valid_batch_is_done(e2e, room_photos,
                                                                        exits_before):
    # (Runs last in this file.) No process of the stack exited...
    assert e2e.stack.check() is None
    assert e2e.stack.stack.exits[exits_before:] == []  # none died and came back
    # ...and a well-formed batch from a well-behaved tenant still completes.
    status, created = submit_batch(e2e, "tenant-c", room_photos[12].read_bytes())
    assert status == 202, created
    batch = finished_batch(e2e, created['batch_id'], "tenant-c", 180)
    assert batch["status"] == "succeeded"
