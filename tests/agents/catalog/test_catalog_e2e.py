"""Catalog ingestion as a stream, end to end: `restyle catalog ingest` publishes one event per
product on restyle.catalog; the workers resize, embed, caption and index them in batches; the
ingest run is followed on the status API; products are then found by id and by text."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from types import SimpleNamespace

import pytest

from streams.cli import catalog
from streams.core.settings import load_settings
from tests.conftest import E2E_BROKERS


@pytest.fixture
def products_dir(tmp_path, room_photos):
    """Three real product photos (one without a caption, one in a category folder) and one
    file that is not an image."""
    tag = uuid.uuid4().hex[:6]
    folder = tmp_path / "products"
    (folder / "lamps").mkdir(parents=True)
    (folder / f"sofa-{tag}.jpg").write_bytes(room_photos[38].read_bytes())
    (folder / f"chair-{tag}.jpg").write_bytes(room_photos[27].read_bytes())
    (folder / "lamps" / f"lamp-{tag}.jpg").write_bytes(room_photos[12].read_bytes())
    (folder / f"broken-{tag}.png").write_bytes(b"this is not a png")
    (folder / "catalog.csv").write_text(
        "image,id,category,caption\n"
        f"sofa-{tag}.jpg,sofa-{tag},sofa,\"Linen sofa, light grey\"\n"
        f"chair-{tag}.jpg,chair-{tag},chair,\"Oak dining chair\"\n")
    return SimpleNamespace(path=folder, tag=tag)


def ingest(e2e, source: str, **options):
    settings = load_settings(state_dir=e2e.stack.state_dir)
    ingest_id, total = asyncio.run(catalog.start_ingest(settings, source, **options))
    return catalog.wait_for_ingest(e2e.client_settings, ingest_id, total, timeout_s=120), total


def test_a_directory_is_indexed_with_generated_captions_and_bad_products_reported(
        e2e, products_dir):
    tag = products_dir.tag
    state, total = ingest(e2e, str(products_dir.path), category_from_folder=True)
    assert total == 4 and state.finished
    assert (state.indexed, state.failed) == (3, 1)
    assert state.failures[f"broken-{tag}"].code == "not_an_image"

    status, sofa = e2e.get(f"/products/sofa-{tag}")
    assert status == 200 and sofa["caption"] == "Linen sofa, light grey"
    assert sofa["category"] == "sofa"
    assert sofa["image"].startswith("s3://") and sofa["image_url"].startswith("http")
    status, lamp = e2e.get(f"/products/lamp-{tag}")
    # No caption given: the captioning model wrote one (tiny weights: words, not sense).
    assert status == 200 and lamp["category"] == "lamps"
    assert lamp["caption"] and lamp["caption"] != f"lamps lamp-{tag}"
    assert e2e.get(f"/products/broken-{tag}")[0] == 404

    status, found = e2e.get("/products/search?q=linen%20sofa&k=3")
    assert status == 200 and len(found["products"]) == 3
    scores = [p["score"] for p in found["products"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    status, chairs = e2e.get("/products/search?q=chair&k=5&category=chair")
    assert status == 200 and {p["category"] for p in chairs["products"]} == {"chair"}


def test_reingesting_updates_products_instead_of_adding_them(e2e, products_dir):
    tag = products_dir.tag
    ingest(e2e, str(products_dir.path))
    (products_dir.path / "catalog.csv").write_text(
        "image,id,category,caption\n"
        f"sofa-{tag}.jpg,sofa-{tag},sofa,\"Green velvet sofa\"\n")
    state, _ = ingest(e2e, str(products_dir.path))
    assert state.indexed == 3
    assert e2e.get(f"/products/sofa-{tag}")[1]["caption"] == "Green velvet sofa"
    status, found = e2e.get("/products/search?q=sofa&k=100")
    ids = [p["product_id"] for p in found["products"]]
    assert ids.count(f"sofa-{tag}") == 1


def test_an_s3_prefix_is_a_catalog_source(e2e, room_photos):
    tag = uuid.uuid4().hex[:6]
    e2e.put_object(f"catalogs/{tag}/rugs/rug-{tag}.jpg", room_photos[5].read_bytes())
    e2e.put_object(f"catalogs/{tag}/vase-{tag}.jpg", room_photos[6].read_bytes())
    state, total = ingest(e2e, f"s3://{e2e.bucket}/catalogs/{tag}", category_from_folder=True)
    assert (total, state.indexed, state.failed) == (2, 2, 0)
    product = e2e.get(f"/products/rug-{tag}")[1]
    assert product["category"] == "rugs"
    assert product["image"] == f"s3://{e2e.bucket}/catalogs/{tag}/rugs/rug-{tag}.jpg"


def test_upstream_events_deletes_and_bad_messages(e2e, room_photos):
    """Any system may publish on restyle.catalog: a delete removes a product; a malformed
    message goes to the DLQ, and when its ingest run is readable the run hears it failed."""
    tag = uuid.uuid4().hex[:6]
    image = e2e.put_object(f"upstream/{tag}.jpg", room_photos[9].read_bytes())
    run = f"upstream-{tag}"
    e2e.publish({"product_id": f"mirror-{tag}", "image": image, "caption": "round mirror",
                 "ingest_id": run, "ingest_total": 3}, topic="restyle.catalog")
    e2e.publish(b"{not json", topic="restyle.catalog")
    e2e.publish({"product_id": f"bad-{tag}", "ingest_id": run, "ingest_total": 3,
                 "colour": "red"}, topic="restyle.catalog")
    e2e.publish({"product_id": f"gone-{tag}", "image": f"s3://{e2e.bucket}/no/such.jpg",
                 "caption": "missing", "ingest_id": run, "ingest_total": 3},
                topic="restyle.catalog")
    state = catalog.wait_for_ingest(e2e.client_settings, run, 3, timeout_s=120)
    assert (state.indexed, state.failed) == (1, 2) and state.finished
    assert state.failures[f"bad-{tag}"].code == "schema_violation"
    assert state.failures[f"gone-{tag}"].code == "object_not_found"
    letters = e2e.collector.wait_for(
        "restyle.dlq", lambda m: dict(m.headers() or []).get("restyle-dlq-source-topic")
        == b"restyle.catalog", count=2)
    assert {dict(m.headers())["restyle-dlq-code"] for m in letters} >= {b"invalid_json",
                                                                        b"schema_violation"}
    assert e2e.get(f"/products/mirror-{tag}")[0] == 200

    e2e.publish({"action": "delete", "product_id": f"mirror-{tag}", "ingest_id": f"del-{tag}",
                 "ingest_total": 1}, topic="restyle.catalog")
    state = catalog.wait_for_ingest(e2e.client_settings, f"del-{tag}", 1, timeout_s=60)
    assert state.deleted == 1
    assert e2e.get(f"/products/mirror-{tag}")[0] == 404


def test_search_rejects_bad_queries(e2e):
    assert e2e.get("/products/search")[0] == 400
    assert e2e.get("/products/search?q=sofa&k=0")[0] == 400
    assert e2e.get("/products/search?q=sofa&k=many")[0] == 400
    assert e2e.get("/catalog/ingests/never-ran")[0] == 404


def test_the_cli_shows_the_outcome_and_exits_1_when_a_product_failed(e2e, products_dir):
    env = {**os.environ, "RESTYLE_STATE_DIR": str(e2e.stack.state_dir)}
    env.pop("RESTYLE_KAFKA_BOOTSTRAP", None)
    done = subprocess.run([sys.executable, "-m", "streams.cli.main", "catalog", "ingest",
                           str(products_dir.path), "--timeout", "120"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "3 indexed, 0 deleted, 1 failed" in done.stdout
    assert f"failed broken-{products_dir.tag}: [not_an_image]" in done.stdout
    assert "indexed: 100%" in done.stderr  # the progress bar ran to completion


def test_two_images_that_would_be_one_product_are_refused_by_name_and_then_ingest(
        e2e, tmp_path, room_photos):
    """sofa/room1.jpg and chair/room1.jpg, or lamp.png beside lamp.jpg, would both be product
    `room1` (or `lamp`): the run would count 4 events, store 2 products and wait for the other
    two until its timeout. The CLI refuses the folder at once, naming the files; with distinct
    ids in catalog.csv the same folder ingests completely."""
    tag = uuid.uuid4().hex[:6]
    folder = tmp_path / "clashing"
    for sub in ("sofa", "chair"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / f"room1-{tag}.jpg").write_bytes(room_photos[38].read_bytes())
    (folder / f"lamp-{tag}.jpg").write_bytes(room_photos[12].read_bytes())
    (folder / f"lamp-{tag}.png").write_bytes(room_photos[12].read_bytes())
    env = {**os.environ, "RESTYLE_STATE_DIR": str(e2e.stack.state_dir)}
    env.pop("RESTYLE_KAFKA_BOOTSTRAP", None)

    def ingest() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streams.cli.main", "catalog", "ingest",
                               str(folder), "--ingest-id", f"clash-{tag}", "--timeout", "120"],
                              capture_output=True, text=True, env=env, timeout=300)

    refused = ingest()
    assert refused.returncode == 1
    assert f"product id 'room1-{tag}' comes from 2 images: chair/room1-{tag}.jpg, " \
           f"sofa/room1-{tag}.jpg" in refused.stderr
    assert f"product id 'lamp-{tag}' comes from 2 images: lamp-{tag}.jpg, lamp-{tag}.png" \
        in refused.stderr
    assert "Traceback" not in refused.stderr
    assert e2e.get(f"/catalog/ingests/clash-{tag}")[0] == 404  # nothing was published

    (folder / "catalog.csv").write_text(
        "image,id\n"
        f"sofa/room1-{tag}.jpg,sofa-room1-{tag}\nchair/room1-{tag}.jpg,chair-room1-{tag}\n"
        f"lamp-{tag}.png,lamp-png-{tag}\n")
    done = ingest()
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ingest clash-{tag}: 4 indexed, 0 deleted, 0 failed" in done.stdout
    for product_id in (f"sofa-room1-{tag}", f"chair-room1-{tag}", f"lamp-{tag}",
                       f"lamp-png-{tag}"):
        assert e2e.get(f"/products/{product_id}")[0] == 200


def test_a_remote_install_ingests_through_its_api_with_a_catalog_key(e2e, products_dir,
                                                                      tmp_path):
    """No broker, no storage: the images go up through POST /uploads and the products through
    POST /catalog/ingests, which takes a key with the `catalog` scope (the operator's, as
    `restyle up` writes it); a tenant's read/write key is refused."""
    if e2e.broker != E2E_BROKERS[0]:
        pytest.skip("the API's ingest does not depend on the broker: run on the first one")
    tag = products_dir.tag
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RESTYLE_STATE_DIR": str(tmp_path / "state"),
           "RESTYLE_STATUS_URL": e2e.stack.endpoints["status_url"],
           "RESTYLE_API_KEY": e2e.key_for("remote-co")}
    for variable in ("RESTYLE_KAFKA_BOOTSTRAP", "RESTYLE_S3_ENDPOINT"):
        env.pop(variable, None)
    command = [sys.executable, "-m", "streams.cli.main", "catalog", "ingest",
               str(products_dir.path), "--category-from-folder", "--ingest-id", f"remote-{tag}"]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "lacks the 'catalog' scope" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert e2e.keyed_records("restyle.catalog", f"sofa-{tag}") == []  # nothing published

    done = subprocess.run(command, env={**env, "RESTYLE_API_KEY": e2e.endpoints["api_key"]},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr  # one product failed
    assert f"ingest remote-{tag}: 3 indexed, 0 deleted, 1 failed" in done.stdout
    assert f"failed broken-{tag}: [not_an_image]" in done.stdout
    status, sofa = e2e.get(f"/products/sofa-{tag}")
    assert status == 200 and sofa["caption"] == "Linen sofa, light grey"
    assert "/uploads/web/" in sofa["image"]  # uploaded through the API
    assert e2e.get(f"/products/lamp-{tag}")[1]["category"] == "lamps"


def test_an_ingest_request_that_cannot_be_published_is_refused_whole(e2e, room_photos):
    if e2e.broker != E2E_BROKERS[0]:
        pytest.skip("the API's checks do not depend on the broker: run on the first one")
    tag = uuid.uuid4().hex[:8]
    uri = e2e.put_object(f"catalog/{tag}.jpg", room_photos[5].read_bytes())
    for body, code, said in (
            ({"products": [{"product_id": "x"}]}, "schema_violation", "needs the product's image"),
            ({"products": []}, "schema_violation", "products"),
            ({"products": [{"product_id": "x", "image": uri}], "tenant": "a"},
             "schema_violation", "tenant"),
            ({"total": 1, "products": [{"product_id": "a", "image": uri},
                                       {"product_id": "b", "image": uri}]},
             "schema_violation", "total (1) is less than the 2 products sent"),
            ({"products": [{"product_id": f"ok-{tag}", "image": uri},
                           {"product_id": "x", "image": "file:///etc/passwd"}]},
             "uri_refused", "/etc/passwd")):
        status, answer = e2e.post_json("/catalog/ingests", body)
        assert (status, answer["error"]["code"]) == (400, code), answer
        assert said in answer["error"]["message"]
    # Nothing of a refused request was published: not even its valid first product.
    assert e2e.keyed_records("restyle.catalog", f"ok-{tag}") == []
