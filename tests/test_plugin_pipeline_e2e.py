"""A pipeline is a plug-in: a throwaway pipeline, defined in this file and added through the two
tables alone (schemas/pipelines.py and agents/pipelines.py), runs end to end in a real worker on
the real broker. Its one stage writes a file.

The worker runs as its own app on its own topics, so the stack's workers never see its events.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from agents import pipelines as agent_pipelines
from schemas import DeadLetter, JobEventKind
from schemas import pipelines as schema_pipelines
from streams.core.admission import admit_job
from streams.core.pipeline import Pipeline
from streams.core.runtime import Runtime
from streams.core.settings import Settings
from streams.core.settings.broker import TopicNames
from streams.stack.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]


# --- the throwaway pipeline: contracts, its topic, its one stage, admission, wiring ---
class StampUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pipeline: Literal["stamp"]
    job_id: str | None = None
    tenant: str | None = None
    text: str


class StampJob(BaseModel):
    pipeline: Literal["stamp"] = "stamp"
    job_id: str
    tenant: str | None = None
    text: str


class StampResult(BaseModel):
    pipeline: Literal["stamp"] = "stamp"
    file: str


class StampTopics(TopicNames):
    stamp: str = "restyle.stage.stamp"


def write_stamp(job: StampJob, directory: Path) -> Path:
    """The stage: the job's text, in a file named after the job."""
    path = directory / f"{job.job_id}.txt"
    path.write_text(job.text)
    return path


async def admit(rt: Runtime, message, upload: dict) -> None:
    await admit_job(rt, message, upload, "stamp", StampUpload,
                    lambda given, job_id: StampJob(job_id=job_id, tenant=given.tenant,
                                                   text=given.text))


def register(rt: Runtime, models, index) -> None:
    async def stamp(job: StampJob) -> None:
        directory = Path(os.environ["STAMP_DIR"])
        if (directory / "bug").exists():  # the DLQ test's bug, until it is "fixed"
            raise RuntimeError("a bug in the stamp stage")
        path = write_stamp(job, directory)
        await rt.job_event(job.job_id, JobEventKind.COMPLETED, tenant=job.tenant,
                           result=StampResult(file=str(path)))

    # What this stage cannot process goes to the DLQ (the job waits), to be replayed.
    rt.stage_agent("stamp", stamp, StampJob, topic=rt.topics_of(StampTopics).stamp,
                   fail_jobs=False)


def install() -> None:
    """The two lines a new pipeline adds, one in each table."""
    schema_pipelines.PIPELINES["stamp"] = schema_pipelines.PipelineContract(
        "stamp", StampJob, StampResult)
    agent_pipelines.PIPELINES["stamp"] = Pipeline(
        name="stamp", register=register, topics=StampTopics, admit=admit, first_stage="stamp")


def serve() -> None:
    """The worker process: restyle's own CPU worker, with the stamp pipeline installed."""
    from streams.worker import run_worker

    install()
    run_worker(Settings(), "cpu", loglevel="warning")


# --- the test ---
@pytest.fixture
def stamp_worker(e2e, tmp_path):
    # Imported here, not at the top: the worker process imports this module for serve().
    from tests.conftest import E2E_BROKERS, TopicCollector

    if e2e.broker != E2E_BROKERS[0]:
        pytest.skip("the plug-in mechanism does not depend on the broker: run on the first one")
    tag = uuid.uuid4().hex[:8]
    # Every topic renamed by its own variable, so nothing is shared with the stack's workers.
    renamed = {}
    for topics in (Settings().topics, *agent_pipelines.topic_sets(), StampTopics()):
        for attr, variable in topics.env_names().items():
            renamed[variable] = f"plugin-{tag}.{getattr(topics, attr)}"
    # The API keys stay shared: the stack's key opens this worker's status API too.
    renamed.pop(Settings().topics.env_names()["api_keys"])
    topics = {attr: renamed[variable]
              for attr, variable in Settings().topics.env_names().items() if variable in renamed}
    port = free_port()
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    env = {**os.environ, **e2e.stack.env, "RESTYLE_STATE_DIR": str(tmp_path / "state"),
           "RESTYLE_APP_ID": f"restyle-plugin-{tag}", "RESTYLE_WEB_PORT": str(port),
           "STAMP_DIR": str(stamps), "PYTHONPATH": str(ROOT),
           **renamed}
    log = open(tmp_path / "worker.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-c", "from tests.test_plugin_pipeline_e2e import serve; serve()"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the plug-in worker did not become healthy"
        time.sleep(0.5)
    collector = TopicCollector(e2e.endpoints["kafka_bootstrap"],
                               [topics["results"], topics["dlq"]], e2e.settings.partitions)
    yield topics, url, stamps, collector, env
    collector.close()
    process.terminate()
    process.wait(30)
    log.close()


def test_a_pipeline_added_through_the_tables_alone_runs_end_to_end(e2e, stamp_worker):
    topics, url, stamps, collector, _ = stamp_worker
    job_id = f"stamp-{uuid.uuid4().hex[:8]}"

    e2e.publish({"pipeline": "stamp", "job_id": job_id, "text": "made by a plug-in"},
                key=job_id.encode(), topic=topics["uploads"])

    record = collector.wait_for(topics["results"], lambda m: m.key() == job_id.encode(), 120)
    result = json.loads(record[0].value())
    assert result["status"] == "done" and result["pipeline"] == "stamp"
    assert Path(result["result"]["file"]) == stamps / f"{job_id}.txt"
    assert (stamps / f"{job_id}.txt").read_text() == "made by a plug-in"
    with urllib.request.urlopen(urllib.request.Request(f"{url}/jobs/{job_id}",
                                                       headers=e2e.auth()), timeout=30) as response:
        state = json.loads(response.read())
    assert state["status"] == "done" and state["result"]["file"] == result["result"]["file"]

    # The intake reads the same table: a pipeline nobody installed is refused by name.
    e2e.publish({"pipeline": "sculpt", "job_id": f"{job_id}-x", "text": "?"},
                key=f"{job_id}-x".encode(), topic=topics["uploads"])
    refused = collector.wait_for(topics["results"],
                                 lambda m: m.key() == f"{job_id}-x".encode(), 60)
    error = json.loads(refused[0].value())["error"]
    assert error["code"] == "unsupported_pipeline"
    assert "unknown pipeline 'sculpt'" in error["message"] and "stamp" in error["message"]
    letters = collector.wait_for(topics["dlq"], lambda m: m.key() == f"{job_id}-x".encode(), 60)
    assert DeadLetter.from_record(letters[0].key(), letters[0].headers()).code == \
        "unsupported_pipeline"


def test_a_dead_letter_is_listed_and_replayed_once_its_cause_is_fixed(e2e, stamp_worker):
    """A stage with a bug dead-letters its message (after RESTYLE_STAGE_ATTEMPTS tries); once
    the bug is fixed, `restyle dlq replay` publishes the original again and the job ends with
    one result, however often it is replayed."""
    topics, _, stamps, collector, env = stamp_worker
    job_id = f"replay-{uuid.uuid4().hex[:8]}"
    (stamps / "bug").write_text("")
    e2e.publish({"pipeline": "stamp", "job_id": job_id, "text": "second time lucky"},
                key=job_id.encode(), topic=topics["uploads"])
    [record] = collector.wait_for(topics["dlq"], lambda m: m.key() == job_id.encode(), 120)
    letter = DeadLetter.from_record(record.key(), record.headers())
    assert (letter.code, letter.attempts, letter.job_id) == ("internal_error", 3, job_id)
    assert letter.reason == ("stamp stage error (attempt 3 of 3): RuntimeError: a bug in the "
                             "stamp stage")
    assert letter.source_topic.endswith("restyle.stage.stamp")
    assert json.loads(record.value())["text"] == "second time lucky"  # the message as it was

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "streams.cli.main", "dlq", *args],
                              capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)

    listed = cli("list", "--code", "internal_error", "--since", "10m")
    assert listed.returncode == 0, listed.stderr
    assert f"job {job_id}" in listed.stdout and "attempts 3" in listed.stdout
    assert cli("list", "--code", "no_such_code").stdout == ""

    (stamps / "bug").unlink()  # the fix is deployed
    dry = cli("replay", "--job-id", job_id, "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith("would replay ")
    time.sleep(3)
    assert not collector.matching(topics["results"], lambda m: m.key() == job_id.encode())

    for _ in range(2):  # replayed twice: still one result
        replayed = cli("replay", "--job-id", job_id)
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout.startswith("replayed ") and letter.source_topic in replayed.stdout
    [result] = collector.wait_for(topics["results"], lambda m: m.key() == job_id.encode(), 120)
    assert json.loads(result.value())["status"] == "done"
    assert (stamps / f"{job_id}.txt").read_text() == "second time lucky"
    time.sleep(5)
    assert len(collector.matching(topics["results"], lambda m: m.key() == job_id.encode())) == 1
    assert cli("replay", "--code", "no_such_code").returncode == 2
