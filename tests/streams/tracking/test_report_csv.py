"""report.csv is opened in spreadsheets: a cell a spreadsheet would run as a formula is
neutralised, and non-ASCII names come back intact."""
from __future__ import annotations

import csv
import io

from schemas.background import ImageOutcome
from streams.tracking.batches import report_csv


def rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_formula_cells_are_prefixed_and_other_text_is_kept_as_is():
    outcomes = [
        ImageOutcome(job_id="j1", name='=HYPERLINK("https://evil.test","open")',
                     image="s3://restyle/=cmd.png", status="failed", error="not_an_image",
                     cause="+1 is not an image"),
        ImageOutcome(job_id="j2", name="façade — 東京.jpg", image="s3://restyle/façade.jpg",
                     status="done", outputs=["s3://restyle/out/0.png"], seed=-5),
        ImageOutcome(job_id="j3", name="@SUM(A1)", status="pending"),
    ]
    first, second, third = rows(report_csv(outcomes))
    assert first["name"] == '\'=HYPERLINK("https://evil.test","open")'
    assert first["cause"] == "'+1 is not an image"
    assert first["image"] == "s3://restyle/=cmd.png"  # only a leading character matters
    assert second["name"] == "façade — 東京.jpg" and second["seed"] == "-5"  # numbers stay
    assert third["name"] == "'@SUM(A1)"
