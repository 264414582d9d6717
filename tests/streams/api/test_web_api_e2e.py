"""What the web app stands on, over HTTP against the running stack: the page and its files served
without a credential (and nothing else through them), files uploaded to and read back from the
caller's own folder only, the caller's job list (read, and followed as a stream), a failed job
retried under a new id, a conditioned generation submitted as JSON, the styles, and a batch's
per-image lines."""
from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from tests.forms import multipart

TENANT, OTHER = "web-api", "web-api-other"
pytestmark = pytest.mark.usefixtures("first_broker_only")


def raw(e2e, path: str, tenant: str | None = None, authorized: bool = True):
    """(status, headers, body bytes) of a GET."""
    headers = e2e.auth(tenant) if authorized else {}
    request = urllib.request.Request(e2e.status_url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def upload(e2e, tenant: str, files: dict[str, bytes]) -> list[dict]:
    body, headers = multipart(files, file_field="file")
    status, answer = e2e.request("POST", "/uploads", body, headers, tenant=tenant)
    assert status == 201, answer
    return answer["files"]


def wait_for_end(e2e, job_id: str, tenant: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, job = e2e.get(f"/jobs/{job_id}", tenant=tenant)
        if status == 200 and job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end: {job}")


def test_the_web_app_is_served_without_a_credential_and_only_its_own_files(e2e):
    status, headers, page = raw(e2e, "/", authorized=False)
    assert status == 200 and b'<script type="module" src="app/main.js">' in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, headers, script = raw(e2e, "/app/main.js", authorized=False)
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    for path in ("/app/..%2Fsite.py", "/app/site.py", "/app/nothing.js"):
        assert raw(e2e, path, authorized=False)[0] == 404, path
    # The API behind it still wants a credential.
    assert raw(e2e, "/jobs", authorized=False)[0] == 401


def test_uploaded_files_are_read_back_by_their_tenant_and_by_no_one_else(e2e, room_photos):
    photo = room_photos[1].read_bytes()
    stored = upload(e2e, TENANT, {"room.jpg": photo, "../../escape.jpg": b"x"})
    assert [f["name"] for f in stored] == ["room.jpg", "../../escape.jpg"]
    assert all(f"tenants/{TENANT}/uploads/web/" in f["uri"] for f in stored)
    # The file name is kept as a name, never as a path: both sit in the same new folder.
    assert stored[1]["uri"].rsplit("/", 1)[0] == stored[0]["uri"].rsplit("/", 1)[0]
    assert "/../" not in stored[1]["uri"]
    uri = stored[0]["uri"]
    status, headers, body = raw(e2e, f"/files?uri={urllib.request.quote(uri)}", TENANT)
    assert status == 200 and body == photo and headers["Content-Type"] == "image/jpeg"
    # Another tenant, and the default tenant (whose folder holds every tenant's), get 404.
    assert raw(e2e, f"/files?uri={urllib.request.quote(uri)}", OTHER)[0] == 404
    assert raw(e2e, f"/files?uri={urllib.request.quote(uri)}")[0] == 404
    climbing = uri.rsplit("/", 3)[0] + "/../../../" + "secret.json"
    assert raw(e2e, f"/files?uri={urllib.request.quote(climbing)}", TENANT)[0] == 404
    # A file above RESTYLE_MAX_IMAGE_BYTES (8 MB in these stacks) is refused, not stored.
    body, headers = multipart({"huge.jpg": b"\0" * (8 * 1024 * 1024 + 1)}, file_field="file")
    status, refused = e2e.request("POST", "/uploads", body, headers, tenant=TENANT)
    assert status == 413 and refused["error"]["code"] == "image_too_large"


def test_a_failed_job_is_listed_and_retried_under_a_new_id(e2e, room_photos):
    [stored] = upload(e2e, TENANT, {"room.jpg": room_photos[2].read_bytes()})
    missing = stored["uri"].replace("room.jpg", "gone.jpg")
    status, answer = e2e.post_json("/jobs", {"pipeline": "condition", "image": missing,
                                             "params": {"conditioning": "canny"}}, tenant=TENANT)
    assert status == 202, answer
    failed = wait_for_end(e2e, answer["job_id"], TENANT)
    assert failed["status"] == "failed" and failed["retryable"] is True
    assert "upload" not in failed  # kept for the retry, not shown

    status, retried = e2e.request("POST", f"/jobs/{failed['job_id']}/retry", tenant=TENANT)
    assert status == 202 and retried["retry_of"] == failed["job_id"]
    assert retried["job_id"] != failed["job_id"] and retried["job_id"].startswith(f"{TENANT}:")
    again = wait_for_end(e2e, retried["job_id"], TENANT)
    assert again["error"]["code"] == failed["error"]["code"]

    status, listed = e2e.get("/jobs?limit=10", tenant=TENANT)
    by_id = {job["job_id"]: job for job in listed["jobs"]}
    assert by_id[failed["job_id"]]["status"] == "failed"
    assert by_id[failed["job_id"]]["pipeline"] == "condition"
    assert by_id[failed["job_id"]]["retryable"] is True
    assert failed["job_id"] not in {job["job_id"] for job in
                                    e2e.get("/jobs", tenant=OTHER)[1]["jobs"]}
    # Another tenant cannot retry it (404, as for any id it cannot see).
    assert e2e.request("POST", f"/jobs/{failed['job_id']}/retry", tenant=OTHER)[0] == 404
    assert e2e.get("/jobs?limit=ten", tenant=TENANT)[0] == 400

    status, answer = e2e.post_json("/jobs", {"pipeline": "condition", "image": stored["uri"],
                                             "params": {"conditioning": "canny", "steps": 2}},
                                   tenant=TENANT)
    done = wait_for_end(e2e, answer["job_id"], TENANT, 240)
    assert done["status"] == "done" and done["retryable"] is False
    status, refused = e2e.request("POST", f"/jobs/{done['job_id']}/retry", tenant=TENANT)
    assert status == 409 and refused["error"]["code"] == "not_retryable"


class ListStream:
    """GET /tenant/events read in the background: each `jobs` event's list, as it came."""

    def __init__(self, e2e, tenant: str, query: str = ""):
        request = urllib.request.Request(f"{e2e.status_url}/tenant/events{query}",
                                         headers=e2e.auth(tenant))
        self.response = urllib.request.urlopen(request, timeout=120)
        self.lists: list[list[dict]] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.response:
                if line.startswith(b"data: "):
                    with self.changed:
                        self.lists.append(json.loads(line[6:])["jobs"])
                        self.changed.notify_all()
        except (OSError, ValueError, AttributeError):  # closed by the test (mid-read)
            pass

    def wait_for(self, predicate, timeout_s: float = 120, since: int = 0) -> list[dict]:
        """The first list (from event number since on) that predicate accepts."""
        with self.changed:
            assert self.changed.wait_for(
                lambda: any(predicate(jobs) for jobs in self.lists[since:]), timeout_s), \
                self.lists
            return next(jobs for jobs in self.lists[since:] if predicate(jobs))

    def close(self) -> None:
        self.response.close()


def test_a_tenants_job_list_streams_each_start_and_end(e2e, room_photos):
    [stored] = upload(e2e, TENANT, {"streamed.jpg": room_photos[3].read_bytes()})
    running = ListStream(e2e, TENANT, "?active=true")
    everything = ListStream(e2e, TENANT, "?limit=5")
    others = ListStream(e2e, OTHER)
    try:
        first = running.wait_for(lambda jobs: True)  # the list as it is, at once
        status, answer = e2e.post_json("/jobs", {"pipeline": "condition", "image": stored["uri"],
                                                 "params": {"conditioning": "canny", "steps": 2}},
                                       tenant=TENANT)
        assert status == 202, answer
        job_id = answer["job_id"]
        assert job_id not in {job["job_id"] for job in first}
        # It is listed running as it starts, then no longer among the running once it ends;
        # the full list says how it ended.
        running.wait_for(lambda jobs: job_id in {job["job_id"] for job in jobs})
        index = len(running.lists)
        ended = everything.wait_for(lambda jobs: any(
            job["job_id"] == job_id and job["status"] == "done" for job in jobs), 240)
        assert ended[0]["job_id"] == job_id and ended[0]["pipeline"] == "condition"
        running.wait_for(lambda jobs: job_id not in {job["job_id"] for job in jobs},
                         since=index)
        assert len(everything.lists[-1]) <= 5
        # Another tenant's stream never lists it.
        assert all(job_id not in {job["job_id"] for job in jobs} for jobs in others.lists)
    finally:
        for stream in (running, everything, others):
            stream.close()
    assert raw(e2e, "/tenant/events?limit=ten", TENANT)[0] == 400
    assert raw(e2e, "/tenant/events", TENANT, authorized=False)[0] == 401


def test_json_submissions_name_a_one_job_pipeline_and_a_readable_image(e2e):
    status, refused = e2e.post_json("/jobs", {"pipeline": "background_replace"}, tenant=TENANT)
    assert status == 400 and "POST /batches" in refused["error"]["message"]
    status, refused = e2e.post_json("/jobs", {"pipeline": "condition",
                                              "image": "s3://restyle/someone-elses.jpg"},
                                    tenant=TENANT)
    assert status == 400 and refused["error"]["code"] == "uri_refused"


def test_the_styles_come_with_what_each_adds_to_the_prompt(e2e):
    status, body = e2e.get("/styles", tenant=TENANT)
    styles = {style["name"]: style["description"] for style in body["styles"]}
    assert status == 200 and "scandinavian" in styles and "interior" in styles["scandinavian"]


def test_a_batch_lists_each_image_with_its_status_and_cause(e2e, room_photos):
    good, bad = upload(e2e, TENANT, {"room.jpg": room_photos[1].read_bytes(),
                                     "broken.jpg": b"not a picture"})
    status, answer = e2e.post_json("/batches", {
        "images": [{"uri": good["uri"], "name": "room.jpg"},
                   {"uri": bad["uri"], "name": "broken.jpg"}],
        "prompt": "a beach", "params": {"steps": 2}}, tenant=TENANT)
    assert status == 202, answer
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status, batch = e2e.get(f"/batches/{answer['batch_id']}?images=true", tenant=TENANT)
        if batch["status"] != "running" and not batch["reporting"]:
            break
        time.sleep(0.5)
    lines = {line["name"]: line for line in batch["images"]}
    assert lines["room.jpg"]["status"] == "done" and lines["room.jpg"]["outputs"], lines
    assert lines["broken.jpg"]["status"] == "failed" and lines["broken.jpg"]["cause"]
    assert "images" not in e2e.get(f"/batches/{answer['batch_id']}", tenant=TENANT)[1]
    json.dumps(batch)  # all of it is JSON a page can read


def test_a_products_picture_is_read_through_the_api(e2e):
    """The catalog is every tenant's: any signed-in caller sees its pictures (a browser may
    not reach the storage a presigned link points at)."""
    status, found = e2e.get("/products/search?q=a%20sofa&k=1", tenant=TENANT)
    product_id = found["products"][0]["product_id"]
    status, headers, body = raw(e2e, f"/products/{product_id}/image", OTHER)
    assert status == 200 and headers["Content-Type"].startswith("image/")
    assert Image.open(io.BytesIO(body)).width > 0
    assert raw(e2e, "/products/no-such-product/image", TENANT)[0] == 404
    assert raw(e2e, f"/products/{product_id}/image", authorized=False)[0] == 401
