"""`restyle dlq list` and `restyle dlq replay`: the dead-letter topic as a tool.

A dead letter is the original message (key, value, headers) with what went wrong in
`restyle-dlq-*` headers (schemas.events.DeadLetter). Listing reads the whole topic from its
start to its end as it is now (no consumer group: nothing is committed, nothing is consumed
away); replaying publishes the original back to the topic it came from, as it was, with an
acknowledged send. Whatever the message causes is idempotent downstream (job ids, the
tracker's one result per job), so a replayed message that succeeds produces one result."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from schemas.events import DeadLetter, original_headers
from streams.adapters.storage import Storage
from streams.core.kafka import client_options
from streams.core.settings import Settings

# A replayed message says where it came from (and a letter it becomes again keeps saying so).
REPLAYED_FROM = "restyle-replayed-from"


@dataclass
class Letter:
    letter: DeadLetter
    value: bytes
    headers: list[tuple[str, bytes | None]]
    partition: int  # where the letter itself is on the DLQ
    offset: int
    key: bytes | None = None  # the original's key, byte for byte

    @property
    def where(self) -> str:
        return f"{self.partition}:{self.offset}"


def parse_since(text: str, now: float | None = None) -> float:
    """A moment: an ISO time (2026-11-29T10:00, UTC unless it says) or an age (90s, 15m, 2h,
    7d)."""
    now = time.time() if now is None else now
    age = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if age:
        return now - float(age.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[age.group(2)]
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def selected(letters: list[Letter], code: str | None = None, since: float | None = None,
             job_id: str | None = None) -> list[Letter]:
    return [item for item in letters
            if (code is None or item.letter.code == code)
            and (since is None or item.letter.at >= since)
            and (job_id is None or job_id in (item.letter.job_id, item.letter.key))]


async def chosen_letters(settings: Settings, code: str | None, since: str | None,
                         job_id: str | None) -> list[Letter]:
    """The dead letters `restyle dlq list` and `replay` select (since: as parse_since reads)."""
    return selected(await read_letters(settings), code,
                    parse_since(since) if since else None, job_id)


async def read_letters(settings: Settings, timeout_s: float = 60) -> list[Letter]:
    """Every record on the DLQ, from its start to its end as it is when read, oldest first per
    partition."""
    from aiokafka import AIOKafkaConsumer

    topic = settings.topics.dlq
    # No group: every partition is assigned to this reader, nothing is committed.
    consumer = AIOKafkaConsumer(topic, **client_options(settings), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        letters: list[Letter] = []
        started = time.monotonic()
        ends = None
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    headers = [(name, None if value is None else bytes(value))
                               for name, value in record.headers or []]
                    letters.append(Letter(DeadLetter.from_record(record.key, headers),
                                          record.value or b"", headers, record.partition,
                                          record.offset, record.key))
            assigned = sorted(consumer.assignment())
            if not assigned:
                if time.monotonic() - started > 10:
                    return letters  # the topic does not exist (yet): nothing dead-lettered
                continue
            if ends is None:
                ends = await consumer.end_offsets(assigned)
            if not [tp for tp in assigned if await consumer.position(tp) < ends[tp]]:
                return sorted(letters, key=lambda item: (item.partition, item.offset))
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"reading {topic} took longer than {timeout_s:.0f} s")
    finally:
        await consumer.stop()


async def replay(settings: Settings, letters: list[Letter], dry_run: bool = False) -> list[str]:
    """Publish each letter's original back to its source topic (its value from storage when
    it was kept there); one line per letter saying what was (or would be) done."""
    from aiokafka import AIOKafkaProducer

    lines = []
    storage = Storage.from_settings(settings)
    producer = None if dry_run else AIOKafkaProducer(**client_options(settings), acks="all",
                                                     max_request_size=8 * 1024 * 1024)
    if producer is not None:
        await producer.start()
    try:
        for item in letters:
            letter = item.letter
            if not letter.source_topic:
                lines.append(f"skipped {item.where}: it does not name its source topic")
                continue
            what = (f"{item.where} ({letter.code}, key {letter.key!r}) to "
                    f"{letter.source_topic}")
            if dry_run:
                lines.append(f"would replay {what}")
                continue
            value = item.value
            if letter.original_uri:
                value = await storage.get(letter.original_uri)
            headers = [(name, value_) for name, value_ in original_headers(item.headers)
                       if name != REPLAYED_FROM]
            headers.append((REPLAYED_FROM, f"{settings.topics.dlq}:{item.where}".encode()))
            await producer.send_and_wait(letter.source_topic, value=value, key=item.key,
                                         headers=headers)
            lines.append(f"replayed {what}")
    finally:
        if producer is not None:
            await producer.stop()
        await storage.close()
    return lines


def describe(item: Letter) -> str:
    letter = item.letter
    at = datetime.fromtimestamp(letter.at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    job = f" job {letter.job_id}" if letter.job_id else ""
    kept = f" (original in {letter.original_uri})" if letter.original_uri else ""
    return (f"{item.where}  {at}  {letter.code}  from {letter.source_topic}@"
            f"{letter.partition}:{letter.offset}  key {letter.key!r}{job}  "
            f"attempts {letter.attempts}{kept}\n    {letter.reason}")
