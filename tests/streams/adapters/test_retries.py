"""Transient failures are retried within the stage's budget, permanent ones never: a real S3
server (SeaweedFS) stopped and started again under a read, a port where nothing listens, a key
that is not there."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from schemas import ErrorCode, StageFailure
from streams.adapters.retries import RetryPolicy, rerun_wait, retried, retry_policy
from streams.adapters.storage import S3Store, Storage
from streams.stack.embedded import (EMBEDDED_S3_KEY, EMBEDDED_S3_SECRET, free_port,
                                    start_seaweedfs)

QUICK = RetryPolicy(budget_s=2.0, first_wait_s=0.05, max_wait_s=0.3)


def s3_storage(endpoint: str, timeout_s: float = 5.0) -> Storage:
    return Storage(S3Store(endpoint, EMBEDDED_S3_KEY, EMBEDDED_S3_SECRET, "us-east-1",
                           timeout_s), [])


def test_a_call_that_fails_for_a_moment_succeeds_on_a_later_attempt():
    calls = []

    async def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "answer"

    answer = asyncio.run(retried(flaky, lambda exc: isinstance(exc, ConnectionError),
                                 "calling", ErrorCode.STORAGE_UNAVAILABLE, QUICK))
    assert answer == "answer" and len(calls) == 3


def test_a_stage_runs_again_after_a_growing_wait_that_workers_do_not_share():
    policy = RetryPolicy(first_wait_s=0.5, max_wait_s=3.0)
    after_first = [rerun_wait(policy, 1) for _ in range(200)]
    assert all(0.5 <= wait <= 1.0 for wait in after_first)  # half fixed, half drawn
    assert len(set(after_first)) > 100  # not in step
    assert all(1.0 <= rerun_wait(policy, 2) <= 2.0 for _ in range(200))
    assert all(1.5 <= rerun_wait(policy, 9) <= 3.0 for _ in range(200))  # never past the cap


def test_a_permanent_error_is_raised_at_once_and_a_zero_budget_tries_once():
    calls = []

    async def refused():
        calls.append(1)
        raise PermissionError("403 Forbidden")

    with pytest.raises(PermissionError):
        asyncio.run(retried(refused, lambda exc: isinstance(exc, ConnectionError), "calling",
                            ErrorCode.STORAGE_UNAVAILABLE, QUICK))
    assert len(calls) == 1

    async def down():
        calls.append(1)
        raise ConnectionRefusedError("refused")

    calls.clear()
    with pytest.raises(StageFailure) as failure:
        asyncio.run(retried(down, lambda exc: True, "calling", ErrorCode.STORAGE_UNAVAILABLE,
                            RetryPolicy(budget_s=0)))
    assert len(calls) == 1 and failure.value.error.attempts == 1


def test_storage_that_never_answers_fails_with_the_attempts_once_the_budget_is_spent():
    store = s3_storage(f"http://127.0.0.1:{free_port()}")  # nothing listens there

    async def read():
        with retry_policy(QUICK):
            try:
                return await store.get("s3://restyle/photos/room.jpg")
            finally:
                await store.close()

    started = time.monotonic()
    with pytest.raises(StageFailure) as failure:
        asyncio.run(read())
    error = failure.value.error
    assert error.code == ErrorCode.STORAGE_UNAVAILABLE
    assert error.attempts >= 2
    assert "reading s3://restyle/photos/room.jpg failed" in error.message
    assert f"{error.attempts} times" in error.message and "retry budget 2 s" in error.message
    assert time.monotonic() - started < 2.0 + 5.0  # the budget, plus one last attempt


def test_an_opensearch_node_that_never_answers_fails_a_search_with_index_unavailable():
    from streams.adapters.index.opensearch import OpenSearchIndex
    from streams.core.settings import Settings

    index = OpenSearchIndex.from_settings(Settings(
        opensearch_url=f"http://127.0.0.1:{free_port()}", opensearch_index="products"))

    async def search():
        with retry_policy(QUICK):
            try:
                return await index.query([1.0, 0.0, 0.0], k=3)
            finally:
                await index.close()

    with pytest.raises(StageFailure) as failure:
        asyncio.run(search())
    error = failure.value.error
    assert error.code == ErrorCode.INDEX_UNAVAILABLE and error.attempts >= 2
    assert error.message.startswith(f"searching the OpenSearch index products failed "
                                     f"{error.attempts} times over")


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    root = tmp_path_factory.mktemp("seaweed")
    port = free_port()
    service, endpoint = start_seaweedfs(root / "data", root / "logs", port)
    box = {"service": service, "endpoint": endpoint, "port": port, "root": root}
    yield box
    box["service"].stop()


def test_a_read_while_the_s3_server_restarts_waits_for_it_and_returns_the_object(seaweed,
                                                                                caplog):
    store = s3_storage(seaweed["endpoint"])

    async def prepare():
        await store.s3.ensure_bucket("restyle")
        await store.put("s3://restyle/rooms/kitchen.jpg", b"kitchen bytes", "image/jpeg")
        await store.close()

    asyncio.run(prepare())
    seaweed["service"].stop()

    def start_again():
        time.sleep(2.0)
        seaweed["service"], _ = start_seaweedfs(seaweed["root"] / "data",
                                                seaweed["root"] / "logs", seaweed["port"])

    restarting = threading.Thread(target=start_again)
    restarting.start()

    async def read():
        with retry_policy(RetryPolicy(budget_s=90, first_wait_s=0.2, max_wait_s=2)):
            try:
                return await store.get("s3://restyle/rooms/kitchen.jpg")
            finally:
                await store.close()

    try:
        with caplog.at_level(logging.INFO, logger="restyle.retries"):
            assert asyncio.run(read()) == b"kitchen bytes"
    finally:
        restarting.join()
    assert [r for r in caplog.records if "retrying" in r.getMessage()]  # it was down


def test_a_missing_object_is_not_retried(seaweed, caplog):
    store = s3_storage(seaweed["endpoint"])

    async def read():
        await store.s3.ensure_bucket("restyle")
        with retry_policy(RetryPolicy(budget_s=30)):
            try:
                return await store.get("s3://restyle/rooms/nowhere.jpg")
            finally:
                await store.close()

    with caplog.at_level(logging.INFO, logger="restyle.retries"):
        with pytest.raises(StageFailure) as failure:
            asyncio.run(read())
    assert failure.value.error.code == ErrorCode.OBJECT_NOT_FOUND
    assert "nowhere.jpg does not exist" in failure.value.error.message
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
