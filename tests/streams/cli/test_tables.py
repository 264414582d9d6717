"""The CLI's lists are tables: a header, a rule, one row per item with its id first."""
from __future__ import annotations

from streams.cli.tables import jobs_table


def test_a_failed_batch_image_is_a_row_with_its_batch_and_cause():
    lines = jobs_table([
        {"job_id": "bg-1", "pipeline": "background_replace", "status": "failed",
         "batch_id": "batch-9", "error": {"code": "not_an_image",
                                          "message": "broken.jpg is not an image"}},
        {"job_id": "mk-2", "pipeline": "room_makeover", "status": "done", "batch_id": None},
    ]).splitlines()
    assert lines[0].split() == ["job", "pipeline", "status", "batch", "cause"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["bg-1", "background_replace", "failed", "batch-9",
                                "not_an_image:", "broken.jpg", "is", "not", "an", "image"]
    assert lines[3].split() == ["mk-2", "room_makeover", "done"]
    # The columns line up: each starts where its header does.
    assert lines[2].index("failed") == lines[0].index("status") == lines[3].index("done")
