"""Catalog ingestion's stages without Kafka: what the index stores for a product, how a batch
becomes one index write, and the outcome each product gets."""
from __future__ import annotations

from agents.catalog import stages
from schemas import CatalogEvent, CatalogItem, ErrorCode, JobError, OutcomeKind


def item(product_id: str, action: str = "upsert", caption: str | None = None,
         generated: str | None = None, ingest: str = "run-1") -> CatalogItem:
    event = CatalogEvent(product_id=product_id, action=action, caption=caption,
                         category="sofa", image=None if action == "delete" else "s3://b/p.jpg",
                         ingest_id=ingest, ingest_total=3)
    return CatalogItem(event=event, vector=[1.0, 0.0] if action == "upsert" else None,
                       caption=generated)


def test_a_product_is_stored_with_its_caption_else_the_generated_one_else_category_and_id():
    assert stages.product_of(item("p1", caption="Grey sofa", generated="a couch")).caption == \
        "Grey sofa"
    assert stages.product_of(item("p1", generated="a couch")).caption == "a couch"
    assert stages.product_of(item("p1")).caption == "sofa p1"


def test_the_last_event_per_product_wins_within_a_batch_and_writes_split_by_action():
    plan = stages.plan_write([item("a", caption="first"), item("b"), item("a", caption="second"),
                              item("b", action="delete"), item("c")])
    assert [(i.event.product_id, i.event.caption) for i in plan.upserts] == \
        [("a", "second"), ("c", None)]
    assert [i.event.product_id for i in plan.deletes] == ["b"]


def test_each_product_gets_its_outcome_and_a_refused_one_its_cause():
    plan = stages.plan_write([item("a", caption="Grey sofa"), item("b"),
                              item("c", action="delete")])
    outcomes = {o.product_id: o for o in stages.written(plan, {"b": "vector has 2 dimensions"})}
    assert outcomes["a"].outcome is OutcomeKind.INDEXED and outcomes["a"].caption == "Grey sofa"
    assert outcomes["b"].outcome is OutcomeKind.FAILED
    assert outcomes["b"].error == JobError(code=ErrorCode.STORAGE_ERROR,
                                           message="vector has 2 dimensions")
    assert outcomes["c"].outcome is OutcomeKind.DELETED
    assert {(o.ingest_id, o.ingest_total) for o in outcomes.values()} == {("run-1", 3)}


def test_a_failed_index_write_fails_every_product_of_the_batch_with_the_cause():
    plan = stages.plan_write([item("a"), item("b", action="delete")])
    outcomes = stages.write_failed(plan, ConnectionError("index unreachable"))
    assert [(o.product_id, o.outcome) for o in outcomes] == [("a", OutcomeKind.FAILED),
                                                             ("b", OutcomeKind.FAILED)]
    assert outcomes[0].error.message == \
        "index write failed: ConnectionError: index unreachable"


def test_an_unreadable_event_still_reaches_its_ingest_run_when_its_ids_are_readable():
    error = JobError(code=ErrorCode.SCHEMA_VIOLATION, message="image: too long")
    found = stages.unreadable(b'{"ingest_id": "run-1", "product_id": "p9", "ingest_total": 4, '
                              b'"image": 7}', error)
    assert (found.ingest_id, found.product_id, found.ingest_total, found.outcome) == \
        ("run-1", "p9", 4, OutcomeKind.FAILED)
    assert found.error == error
    assert stages.unreadable(b'{"ingest_id": "bad id!", "product_id": "p9"}', error) is None
    assert stages.unreadable(b"not json", error) is None
