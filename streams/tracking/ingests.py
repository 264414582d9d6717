"""The ingest tracker: folds restyle.catalog-events into the ingests table, which
`GET /catalog/ingests/{ingest_id}` (and so `restyle catalog ingest`) reads."""
from __future__ import annotations

from schemas import CatalogOutcome, IngestState, OutcomeKind, fold_outcome
from streams.core.runtime import Runtime
from streams.tracking.tables import Tables


def register(rt: Runtime, tables: Tables) -> None:
    ingests, outcomes = tables.ingests, tables.ingest_outcomes

    async def track(outcome: CatalogOutcome) -> None:
        key = outcome.ingest_id.encode()
        product_key = f"{outcome.ingest_id}/{outcome.product_id}".encode()
        stored, previous = ingests.get(key), outcomes.get(product_key)
        state = fold_outcome(IngestState.model_validate_json(stored) if stored else None,
                             OutcomeKind(previous.decode()) if previous else None, outcome)
        ingests[key] = state.model_dump_json().encode()
        outcomes[product_key] = outcome.outcome.value.encode()

    rt.stage_agent("ingest-tracker", track, CatalogOutcome, topic=rt.topics.catalog_events,
                   fail_jobs=False, follows_cancellations=False)


def lookup(tables: Tables, ingest_id: str) -> IngestState | None:
    stored = tables.ingests.get(ingest_id.encode())
    return IngestState.model_validate_json(stored) if stored else None
