"""Where bucket notifications come from when the store cannot send them to Kafka itself.

- `restyle bridge sqs QUEUE_URL`: S3 buckets that notify an SQS queue (AWS). Messages move to
  the bucket-events topic at least once: each is deleted from SQS only after Kafka acknowledged
  it; a crash in between redelivers it after the visibility timeout (and the job id, derived
  from the object version, keeps the duplicate from running twice).
- `restyle watch`: stores with no notifications at all (the embedded SeaweedFS): the rules'
  prefixes are listed every few seconds, and each new object (key and ETag) is published as an
  S3 event record, as S3 itself would.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from dataclasses import dataclass

from agents.condition.topics import ConditionTopics
from streams.adapters.storage import S3Store
from streams.core.kafka import client_options
from streams.core.settings import Settings

log = logging.getLogger("restyle.bucket")


@dataclass
class BridgeCounts:
    received: int = 0
    forwarded: int = 0
    deleted: int = 0


def message_key(body: str) -> bytes:
    """Kafka key of a notification: bucket/key of its first record when readable, so events
    of one object stay in order; else nothing (round robin)."""
    try:
        data = json.loads(body)
        if data.get("Type") == "Notification":
            data = json.loads(data["Message"])
        record = data["Records"][0]["s3"]
        return f"{record['bucket']['name']}/{record['object']['key']}".encode()
    except Exception:
        return b""


async def bridge_sqs(settings: Settings, queue_url: str, endpoint_url: str | None = None,
                     region: str | None = None, once: bool = False, wait_s: int = 20,
                     batch: int = 10, stop: asyncio.Event | None = None) -> BridgeCounts:
    """Move SQS messages to the bucket-events topic until stopped (or, with once, until the
    queue answers empty)."""
    import aioboto3
    from aiokafka import AIOKafkaProducer

    counts = BridgeCounts()
    stop = stop or asyncio.Event()
    producer = AIOKafkaProducer(**client_options(settings), acks="all",
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    session = aioboto3.Session()
    try:
        async with session.client("sqs", endpoint_url=endpoint_url,
                                  region_name=region or settings.s3_region) as sqs:
            while not stop.is_set():
                answer = await sqs.receive_message(
                    QueueUrl=queue_url, MaxNumberOfMessages=batch,
                    WaitTimeSeconds=0 if once else wait_s)
                messages = answer.get("Messages", [])
                if not messages:
                    if once:
                        break
                    continue
                counts.received += len(messages)
                # Every message acknowledged by Kafka before any is deleted from SQS.
                sends = [await producer.send(ConditionTopics().bucket_events, m["Body"].encode(),
                                             key=message_key(m["Body"]) or None)
                         for m in messages]
                await asyncio.gather(*sends)
                counts.forwarded += len(messages)
                deleted = await sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                    for n, m in enumerate(messages)])
                counts.deleted += len(deleted.get("Successful", []))
                for failure in deleted.get("Failed", []):
                    log.warning("SQS kept a forwarded message (it will come again): %s",
                                failure)
    finally:
        await producer.stop()
    return counts


def s3_record(bucket: str, key: str, size: int, etag: str) -> dict:
    """An object-created notification in the AWS S3 event format (key URL-encoded)."""
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "restyle:watch", "eventName": "ObjectCreated:Put",
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket},
               "object": {"key": urllib.parse.quote_plus(key, safe="/"), "size": size,
                          "eTag": etag}}}]}


async def watch(settings: Settings, stop: asyncio.Event | None = None,
                interval_s: float | None = None) -> None:
    """Publish a notification for each new object under the rules' prefixes, until stopped."""
    from aiokafka import AIOKafkaProducer

    stop = stop or asyncio.Event()
    interval_s = interval_s or settings.bucket_watch_interval_s
    watched = sorted({(r.bucket, r.prefix) for r in settings.rules if r.bucket != "*"})
    store = S3Store(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                    settings.s3_region)
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    seen: set[tuple[str, str, str]] = set()
    log.info("watching %s", ", ".join(f"s3://{b}/{p}" for b, p in watched))
    try:
        while not stop.is_set():
            client = await store.client()
            for bucket, prefix in watched:
                try:
                    paginator = client.get_paginator("list_objects_v2")
                    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                        for item in page.get("Contents", []):
                            identity = (bucket, item["Key"], item.get("ETag", ""))
                            if identity in seen:
                                continue
                            record = s3_record(bucket, item["Key"], item.get("Size", 0),
                                               item.get("ETag", "").strip('"'))
                            await producer.send_and_wait(
                                ConditionTopics().bucket_events, json.dumps(record).encode(),
                                key=f"{bucket}/{item['Key']}".encode())
                            seen.add(identity)
                except Exception as exc:  # a missing bucket or a hiccup: try next round
                    log.warning("listing s3://%s/%s failed: %s", bucket, prefix, exc)
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except asyncio.TimeoutError:
                pass
    finally:
        await producer.stop()
        await store.close()
