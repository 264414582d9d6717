"""What `restyle catalog ingest` reads from a directory, how ingest runs are counted, and the
captioner that writes captions for products that have none."""
from __future__ import annotations

import asyncio

import pytest
from PIL import Image

from schemas import CatalogOutcome, ErrorCode, JobError, OutcomeKind, fold_outcome
from streams.adapters.storage import Storage
from streams.cli.catalog import DuplicateProductIds, list_source, products_from_listing
from streams.core.settings import Settings


def test_a_directory_with_a_csv_and_folders(tmp_path, room_photos):
    catalog = tmp_path / "catalog"
    (catalog / "chairs").mkdir(parents=True)
    (catalog / "chairs" / "oak.jpg").write_bytes(room_photos[27].read_bytes())
    (catalog / "sofa.jpg").write_bytes(room_photos[38].read_bytes())
    (catalog / "notes.txt").write_text("not a product")
    (catalog / "catalog.csv").write_text(
        "image,id,category,caption\nsofa.jpg,sofa-1,sofa,\"Sofa, light grey\"\n")
    storage = Storage.from_settings(Settings())

    def listed(category_from_folder):
        products = asyncio.run(list_source(storage, str(catalog), category_from_folder, "run-1"))
        return {p.event.product_id: p.event for p in products}

    plain = listed(False)
    assert set(plain) == {"sofa-1", "oak"}  # the text file is not a product
    assert plain["sofa-1"].caption == "Sofa, light grey" and plain["sofa-1"].category == "sofa"
    assert plain["oak"].category is None and plain["oak"].caption is None  # to be captioned
    assert plain["oak"].image == (catalog / "chairs" / "oak.jpg").as_uri()
    assert {e.ingest_id for e in plain.values()} == {"run-1"}
    assert listed(True)["oak"].category == "chairs"


def test_images_that_would_be_one_product_are_refused_by_name():
    names = ["sofa/room1.jpg", "chair/room1.jpg", "lamp.jpg", "lamp.png", "desk.jpg"]
    with pytest.raises(DuplicateProductIds) as refused:
        products_from_listing(names, {}, category_from_folder=True)
    assert refused.value.clashes == {"room1": ["chair/room1.jpg", "sofa/room1.jpg"],
                                     "lamp": ["lamp.jpg", "lamp.png"]}
    assert "product id 'lamp' comes from 2 images: lamp.jpg, lamp.png" in str(refused.value)

    # Ids from catalog.csv (keyed by the path below the source) tell them apart.
    rows = {"sofa/room1.jpg": {"id": "sofa-room1"}, "chair/room1.jpg": {"id": "chair-room1"},
            "lamp.png": {"id": "lamp-png"}}
    ids = [fields["product_id"] for _, fields in products_from_listing(names, rows, True)]
    assert sorted(ids) == ["chair-room1", "desk", "lamp", "lamp-png", "sofa-room1"]


def outcome(product_id: str, kind: OutcomeKind, total: int = 3) -> CatalogOutcome:
    error = JobError(code=ErrorCode.NOT_AN_IMAGE, message="no") if kind == "failed" else None
    return CatalogOutcome(ingest_id="run", product_id=product_id, outcome=kind,
                          ingest_total=total, error=error, at=1.0)


def test_an_ingest_run_counts_each_product_once_and_finishes_when_all_are_in():
    state = fold_outcome(None, None, outcome("a", OutcomeKind.INDEXED))
    state = fold_outcome(state, OutcomeKind.INDEXED, outcome("a", OutcomeKind.INDEXED))
    assert state.indexed == 1 and not state.finished  # a redelivery is not a second product
    state = fold_outcome(state, None, outcome("b", OutcomeKind.FAILED))
    assert state.failed == 1 and state.failures["b"].code == ErrorCode.NOT_AN_IMAGE
    state = fold_outcome(state, OutcomeKind.FAILED, outcome("b", OutcomeKind.INDEXED))
    assert (state.indexed, state.failed, state.failures) == (2, 0, {})  # a retry that worked
    state = fold_outcome(state, None, outcome("c", OutcomeKind.DELETED))
    assert state.finished and state.processed == 3


def test_the_captioner_writes_a_caption_without_the_prompt(tiny_models, room_photos):
    from agents.models.caption import Captioner

    captioner = Captioner.from_pretrained(str(tiny_models / "captioner"))
    photos = [Image.open(p).convert("RGB") for p in room_photos[:2]]
    captions = captioner.caption(photos, "a photo of", max_tokens=8)
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)
    assert not any(c.startswith("a photo of") for c in captions)
