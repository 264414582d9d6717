"""Choosing dead letters: by code, by age or time, by job."""
from __future__ import annotations

from datetime import datetime, timezone

from schemas import DeadLetter
from streams.cli.dlq import Letter, parse_since, selected


def letter(code: str, at: float, job_id: str | None = None, key: str | None = None) -> Letter:
    return Letter(DeadLetter(source_topic="restyle.uploads", code=code, reason="…", at=at,
                             job_id=job_id, key=key), b"{}", [], 0, int(at))


def test_since_reads_an_age_or_a_moment():
    now = 1_000_000.0
    assert parse_since("90s", now) == now - 90
    assert parse_since("15m", now) == now - 900
    assert parse_since("2h", now) == now - 7200
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("2026-11-29T10:00") == datetime(2026, 11, 29, 10, tzinfo=timezone.utc) \
        .timestamp()
    assert parse_since("2026-11-29T10:00+01:00") == datetime(2026, 11, 29, 9,
                                                             tzinfo=timezone.utc).timestamp()


def test_letters_are_chosen_by_code_time_and_job():
    letters = [letter("invalid_json", 100, key="k1"), letter("internal_error", 200, "j2"),
               letter("internal_error", 300, "j3", key="j3")]
    assert [item.letter.at for item in selected(letters, code="internal_error")] == [200, 300]
    assert [item.letter.at for item in selected(letters, since=250)] == [300]
    assert [item.letter.at for item in selected(letters, job_id="j2")] == [200]
    assert [item.letter.at for item in selected(letters, job_id="k1")] == [100]  # by key too
    assert selected(letters, code="internal_error", since=350) == []


def test_a_letter_reads_back_from_the_headers_it_was_written_with():
    written = DeadLetter(source_topic="restyle.stage.mask", partition=2, offset=41,
                         key="job-7", code="internal_error", reason="mask stage error",
                         job_id="job-7", attempts=3, at=1234.5,
                         original_uri="s3://restyle/dlq/restyle.stage.mask/2-41")
    assert DeadLetter.from_record(b"job-7", written.headers()) == written
