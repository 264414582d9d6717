"""Raw messages that are JSON in name only: each is refused as invalid_json (the intake sends
it to the DLQ), never a stage error."""
from __future__ import annotations

import pytest

from schemas import ErrorCode, StageFailure
from streams.core.runtime import MAX_JSON_DEPTH, json_object


@pytest.mark.parametrize("raw, says", [
    (b"[" * 100_000 + b"]" * 100_000, "nests deeper"),  # past json's own recursion limit
    (b'{"a": ' * 40 + b"1" + b"}" * 40, "nests deeper"),
    (b"\xff\xfe not utf-8", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"null", "must be a JSON object"),
    (b"", "must be a JSON object"),
])
def test_unusable_json_is_invalid_json(raw, says):
    with pytest.raises(StageFailure, match=says) as failure:
        json_object(raw)
    assert failure.value.error.code is ErrorCode.INVALID_JSON


def test_ordinary_nesting_is_fine():
    nested = b'{"a": ' * (MAX_JSON_DEPTH - 1) + b"[1]" + b"}" * (MAX_JSON_DEPTH - 1)
    assert json_object(nested)["a"]
