"""The status API's OpenAPI document (schemas/contracts/openapi.json) describes exactly the routes
and methods the workers serve, is a valid OpenAPI 3.1 document, and the workers serve it at
/openapi.json without a credential; a real job's answers validate against it."""
from __future__ import annotations

import gc
import json
import urllib.request
import uuid

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from streams.api.health import OPENAPI_FILE
from streams.api.openapi import document
from streams.core.settings import Settings
from streams.worker import build_worker

METHODS = ("get", "post", "put", "patch", "delete")


def served_methods(view) -> set[str]:
    """The methods a view implements itself (faust's base View answers the rest with 405)."""
    return {method for method in METHODS for cls in type(view).__mro__
            if not cls.__module__.startswith("faust") and method in vars(cls)}


@pytest.fixture(scope="module")
def published() -> dict:
    return json.loads(OPENAPI_FILE.read_text())


def test_the_document_is_valid_openapi_3_1(published):
    validate(published)
    assert published == json.loads(json.dumps(document()))


def test_the_document_describes_exactly_the_routes_a_worker_serves(published, tiny_models,
                                                                  tmp_path):
    settings = Settings(state_dir=tmp_path, kafka_bootstrap="127.0.0.1:1",
                        models_dir=tiny_models, storage_base=(tmp_path / "store").as_uri())
    rt = build_worker(settings, "cpu", 6099)  # built, not started: nothing is reached
    gc.unfreeze()  # the worker settled its heap (streams/core/heap.py): the tests' is their own
    served = {(path, method) for path, view in rt.app.web.views.items()
              for method in served_methods(view)}
    described = {(path, method) for path, operations in published["paths"].items()
                 for method in operations}
    assert served == described


def test_the_api_serves_its_description_and_real_answers_match_it(e2e, room_photos, published):
    base = e2e.stack.endpoints["status_url"]
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as response:  # no key
        assert json.loads(response.read()) == published

    job_id = f"openapi-{uuid.uuid4().hex[:8]}"
    e2e.publish({"job_id": job_id, "pipeline": "room_makeover", "style": "modern",
                 "image": e2e.put_object("incoming/openapi.jpg", room_photos[7].read_bytes())},
                key=job_id.encode())
    assert e2e.result(job_id)["status"] == "done"
    status, job = e2e.get(f"/jobs/{job_id}")
    missing_status, missing = e2e.get("/jobs/no-such-job")

    def answer_schema(path: str, status: int) -> Draft202012Validator:
        schema = published["paths"][path]["get"]["responses"][str(status)]["content"][
            "application/json"]["schema"]
        return Draft202012Validator({**schema, "components": published["components"]})

    assert status == 200 and missing_status == 404
    assert list(answer_schema("/jobs/{job_id}", 200).iter_errors(job)) == []
    assert list(answer_schema("/jobs/{job_id}", 404).iter_errors(missing)) == []
