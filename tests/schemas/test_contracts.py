"""The published contracts (schemas/contracts/): a JSON Schema per topic payload and an AsyncAPI 3
document, written from the code by `restyle contracts`. They fail here when the code changes and
the files do not, when a file is not valid JSON Schema or AsyncAPI 3, and when a topic's declared
payload is not what its consumer reads.

tests/specs/asyncapi-3.0.0.schema.json is the official AsyncAPI 3.0.0 schema, vendored from the npm package
@asyncapi/specs 6.11.1 (schemas/3.0.0-without-$id.json, Apache-2.0)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft7Validator, Draft202012Validator

from agents.pipelines import PIPELINES, topic_sets
from gpu_agent import training
from gpu_agent import worker as gpu_worker
from gpu_agent.engine import RenderEngine
from streams.cli import contracts
from streams.core.settings import Settings
from streams.core.settings.broker import Topics
from tests.inprocess import InProcessRuntime

ASYNCAPI_3 = json.loads((Path(__file__).parents[1] / "specs" / "asyncapi-3.0.0.schema.json")
                        .read_text())


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    state = tmp_path_factory.mktemp("contracts")
    return Settings(state_dir=state, storage_base=state.as_uri())


def published(path: str) -> dict:
    return json.loads((contracts.CONTRACTS_DIR / path).read_text())


def test_the_published_contracts_match_the_code(settings):
    assert contracts.stale(contracts.documents(settings)) == [], \
        "schemas/contracts/ differs from the code: run `restyle contracts` and commit it"


def test_a_changed_contract_is_caught(settings, tmp_path):
    contracts.write(settings, tmp_path)
    assert contracts.stale(contracts.documents(settings), tmp_path) == []
    results = tmp_path / "topics" / "restyle.results.json"
    results.write_text(results.read_text().replace('"job_id"', '"jobId"'))
    (tmp_path / "topics" / "restyle.gone.json").write_text("{}")
    assert contracts.stale(contracts.documents(settings), tmp_path) == \
        ["topics/restyle.gone.json", "topics/restyle.results.json"]


def test_every_topic_has_a_valid_json_schema(settings):
    names = [channel.address for channel in contracts.channels(settings)]
    assert "restyle.uploads" in names and "restyle.results" in names
    for address in names:
        schema = published(f"topics/{address}.json")
        Draft202012Validator.check_schema(schema)
        assert schema["description"]


def test_the_asyncapi_document_is_valid_asyncapi_3():
    document = published("asyncapi.json")
    problems = [f"{list(e.path)}: {e.message[:200]}"
                for e in Draft7Validator(ASYNCAPI_3).iter_errors(document)]
    assert problems == []
    results = document["channels"]["restyle_results"]
    assert results["address"] == "restyle.results"
    message = document["components"]["messages"]["ResultEvent"]
    assert message["bindings"]["kafka"]["key"]["description"] == "the job id"
    assert document["operations"]["send_restyle_results"]["action"] == "send"
    assert document["operations"]["receive_restyle_uploads"]["action"] == "receive"
    dlq = document["components"]["messages"]["DeadLetterRecord"]
    assert "restyle-dlq-code" in dlq["headers"]["properties"]


def test_every_topic_says_what_it_carries():
    for topics in [Topics, *{type(t) for t in topic_sets()}]:
        assert set(topics.carries) == set(topics.model_fields), topics.__name__


def test_each_consumer_reads_the_payload_its_topic_declares(settings):
    """Every agent restyle registers decodes its topic's value with the declared model (or
    takes raw values where the topic's value is not restyle's to shape)."""
    rt = InProcessRuntime(settings, topic_sets())
    for pipeline in PIPELINES.values():
        pipeline.register(rt, None, None)
    gpu_worker.register(rt, RenderEngine("cpu", "float32"))
    training.register(rt)
    declared = {channel.address: channel for channel in contracts.channels(settings)}
    checked = 0
    for topic, agents in rt.agents.items():
        channel = declared[topic]
        for agent in agents:
            if channel.attribute == "uploads":
                assert agent.model is None  # each pipeline validates its own uploads
            else:
                assert agent.model is channel.carries.payload, (topic, agent.name)
            checked += 1
    assert checked >= 20


def test_uploads_accept_every_pipelines_uploads_and_cancel_requests():
    schema = published("topics/restyle.uploads.json")
    titles = {ref["$ref"].rsplit("/", 1)[1] for ref in schema["anyOf"]}
    assert {"MakeoverUpload", "BackgroundBatch", "TitanRequest", "ConditionUpload",
            "AvatarTrainUpload", "AvatarGenerateUpload", "CancelRequest"} <= titles
