"""The published contracts, written from the code: a JSON Schema for every topic's payload, an
AsyncAPI 3 document of the topics (channels, keys, headers, payloads), and the status API's
OpenAPI 3.1 document (streams/api/openapi.py).
`restyle contracts` writes them into schemas/contracts/ (checked in and installed with the
package); a test fails when the code and the files differ.

What each topic carries is declared beside its name (TopicNames.carries); what each pipeline's
uploads validate against beside the pipeline (Pipeline.uploads)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from agents.pipelines import PIPELINES, topic_sets
from streams.api import openapi
from schemas import CONTRACTS_DIR
from schemas.events import DLQ_HEADER, CancelRequest, DeadLetter
from streams.core.settings import Settings
from streams.core.settings.broker import Carries

ASYNCAPI = "asyncapi.json"
OPENAPI = "openapi.json"
TOPICS_DIR = "topics"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# A message for a topic whose value restyle does not shape, by topic attribute.
RAW_MESSAGES = {"dlq": "DeadLetterRecord", "bucket_events": "BucketNotification"}


@dataclass(frozen=True)
class Channel:
    attribute: str
    address: str
    carries: Carries
    members: tuple[type[BaseModel], ...]  # the payload's models (several: one of them)
    renamed_by: str  # the variable that renames the topic

    @property
    def name(self) -> str:
        return self.address.replace(".", "_")

    @property
    def message(self) -> str:
        if not self.members:
            return RAW_MESSAGES.get(self.attribute, f"{self.attribute.title()}Record")
        return self.members[0].__name__ if len(self.members) == 1 else \
            f"{self.attribute.title().replace('_', '')}"

    @property
    def payload(self) -> Any:
        return Union[self.members] if len(self.members) > 1 else \
            self.members[0] if self.members else None


def channels(settings: Settings) -> list[Channel]:
    """Every topic with what it carries: the shared ones, then each pipeline's own."""
    found = []
    for topics in [settings.topics, *topic_sets()]:
        for attribute, address in topics.model_dump().items():
            carries = type(topics).carries[attribute]
            members = uploads() if topics is settings.topics and attribute == "uploads" \
                else (carries.payload,) if carries.payload is not None else ()
            found.append(Channel(attribute, address, carries, members,
                                 topics.env_names()[attribute]))
    return found


def uploads() -> tuple[type[BaseModel], ...]:
    """What restyle.uploads accepts: each pipeline's uploads, and cancel requests."""
    models = [model for pipeline in PIPELINES.values() for model in pipeline.uploads]
    return (*dict.fromkeys(models), CancelRequest)


def topic_schema(channel: Channel) -> dict:
    """The payload's standalone JSON Schema (2020-12), titled by its topic."""
    found = TypeAdapter(channel.payload).json_schema() if channel.members else {}
    described = {"$schema": JSON_SCHEMA_DIALECT, "$id": f"{channel.address}.json",
                 "title": f"{channel.address}: {channel.message}",
                 "description": channel.carries.summary}
    if "description" in found and channel.members and len(channel.members) == 1:
        described["description"] += "\n\n" + found.pop("description")
    return {**described, **{k: v for k, v in found.items() if k != "title"}}


def dlq_headers() -> dict:
    """The `restyle-dlq-*` headers of a dead letter (Kafka header values: UTF-8 text)."""
    names = [name for name, _ in DeadLetter(source_topic="t", partition=0, offset=0,
                                             code="c", reason="r", job_id="j", at=0.0,
                                             original_uri="s3://b/k").headers()]
    described = {"code": "the error code", "reason": "the cause in a sentence",
                 "source-topic": "where the original was read", "source-partition": "its "
                 "partition", "source-offset": "its offset", "attempts": "how many times the "
                 "stage tried it", "job-id": "the job it belonged to, when known",
                 "at": "when it was given up (Unix time)",
                 "original": "the original's URI, when it was too large to keep inline"}
    return {"type": "object", "properties": {
        name: {"type": "string", "description": described[name[len(DLQ_HEADER):]]}
        for name in names}, "required": [DLQ_HEADER + "code", DLQ_HEADER + "reason",
                                         DLQ_HEADER + "source-topic"]}


def asyncapi(settings: Settings) -> dict:
    """An AsyncAPI 3.0 document of every topic, from restyle's point of view: it receives what
    upstream systems publish, sends what downstream systems read, and both sends and receives
    its internal topics."""
    found = channels(settings)
    models = list(dict.fromkeys(m for channel in found for m in channel.members))
    _, definitions = models_json_schema([(m, "validation") for m in models],
                                        ref_template="#/components/schemas/{model}")
    messages, channel_docs, operations = {}, {}, {}
    for channel in found:
        message = {"name": channel.message, "title": channel.message,
                   "contentType": "application/json" if channel.members or
                   channel.attribute == "bucket_events" else "application/octet-stream",
                   "summary": channel.carries.summary,
                   "bindings": {"kafka": {"key": {"type": "string",
                                                  "description": channel.carries.key},
                                          "bindingVersion": "0.5.0"}}}
        if len(channel.members) == 1:
            message["payload"] = {"$ref": f"#/components/schemas/{channel.message}"}
        elif channel.members:
            message["payload"] = {"oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"}
                                            for m in channel.members]}
        if channel.attribute == "dlq":
            message["headers"] = dlq_headers()
        messages.setdefault(channel.message, message)
        channel_docs[channel.name] = {
            "address": channel.address, "title": channel.address,
            "description": f"{channel.carries.summary} ({direction(channel.carries)}; renamed "
                           f"by {channel.renamed_by})",
            "messages": {channel.message: {"$ref": f"#/components/messages/{channel.message}"}}}
        actions = {"in": ["receive"], "out": ["send"],
                   "internal": ["send", "receive"]}[channel.carries.direction]
        for action in actions:
            operations[f"{action}_{channel.name}"] = {
                "action": action, "channel": {"$ref": f"#/channels/{channel.name}"},
                "messages": [{"$ref": f"#/channels/{channel.name}/messages/{channel.message}"}]}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "restyle", "version": version("restyle"),
                 "description": "restyle's Kafka topics: what upstream systems publish (uploads, "
                                "catalog products, bucket notifications), what restyle publishes "
                                "for downstream systems (results, job events, notifications, dead "
                                "letters), and its workers' internal topics. Values are JSON "
                                "(UTF-8); keys are UTF-8 strings."},
        "defaultContentType": "application/json",
        "servers": {"kafka": {"host": "localhost:9092", "protocol": "kafka",
                              "description": "any Kafka-protocol broker "
                                             "(RESTYLE_KAFKA_BOOTSTRAP)"}},
        "channels": channel_docs,
        "operations": operations,
        "components": {"schemas": definitions["$defs"], "messages": messages},
    }


def direction(carries: Carries) -> str:
    return {"in": "published by other systems for restyle",
            "out": "published by restyle for other systems",
            "internal": "between restyle's workers; may change in any release"}[carries.direction]


def documents(settings: Settings) -> dict[str, str]:
    """Every contract file, by its path under schemas/contracts/, as written."""
    files = {ASYNCAPI: asyncapi(settings), OPENAPI: openapi.document()}
    for channel in channels(settings):
        files[f"{TOPICS_DIR}/{channel.address}.json"] = topic_schema(channel)
    return {path: json.dumps(document, indent=2, sort_keys=False) + "\n"
            for path, document in files.items()}


def write(settings: Settings, directory: Path = CONTRACTS_DIR) -> list[str]:
    """Writes every contract file (removing topic schemas no topic has any more); returns the
    paths that changed."""
    wanted = documents(settings)
    changed = stale(wanted, directory)
    for path in (directory / TOPICS_DIR).glob("*.json") if (directory / TOPICS_DIR).exists() \
            else []:
        if f"{TOPICS_DIR}/{path.name}" not in wanted:
            path.unlink()
    for path, text in wanted.items():
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_text(text)
    return changed


def stale(wanted: dict[str, str], directory: Path = CONTRACTS_DIR) -> list[str]:
    """The contract files that differ from the code: missing, changed or left over."""
    changed = [path for path, text in wanted.items()
               if not (directory / path).exists() or (directory / path).read_text() != text]
    if (directory / TOPICS_DIR).exists():
        changed += [f"{TOPICS_DIR}/{path.name}" for path in (directory / TOPICS_DIR).glob("*.json")
                    if f"{TOPICS_DIR}/{path.name}" not in wanted]
    return sorted(changed)
