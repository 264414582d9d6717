"""What fencing costs a result (RESTYLE_RESULT_TRANSACTIONS): publishing one result in its own
transaction against one acknowledged send, on a fresh Apache Kafka, measured in one run.

    python bench/result_fencing.py [--results 300]

The two ways alternate, one result at a time (the tracker publishes results one by one), so the
machine's noise falls on both alike. Prints the median and p95 per result each way and their
ratio: the time to publish it, and the time until a consumer of the results (read_committed,
as librdkafka's consumers read by default) has it. A committed transaction becomes readable
only once the broker has written its commit markers, after the commit's answer.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def measure(bootstrap: str, results: int) -> dict[str, list[float]]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from streams.tracking.fencing import TransactionalResults

    topic = f"results-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # Partition 0 takes the transactions, 1 the plain sends: a plain record behind an open
        # transaction would be held back with it.
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    fenced = TransactionalResults({"bootstrap_servers": bootstrap}, topic, "bench")
    # A downstream consumer's settings: a long-poll, answered as soon as a record is readable.
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                              fetch_max_wait_ms=500, auto_offset_reset="earliest")
    await plain.start()
    await reader.start()
    reader.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    arrived: dict[bytes, asyncio.Future] = {}

    async def read() -> None:
        async for record in reader:
            arrived.setdefault(record.key, asyncio.get_running_loop().create_future()
                               ).set_result(time.perf_counter())

    async def readable(key: bytes) -> float:
        return await arrived.setdefault(key, asyncio.get_running_loop().create_future())

    reading = asyncio.ensure_future(read())
    fenced.take([0])
    await fenced.ready(0)
    timings: dict[str, list[float]] = {way: [] for way in (
        "acknowledged send", "transaction", "send -> readable", "transaction -> readable")}
    try:
        for n in range(results + 10):  # the first 10 of each warm up
            value = b'{"job_id": "bench-%d", "status": "done"}' % n
            started = time.perf_counter()
            await plain.send_and_wait(topic, value, key=b"plain-%d" % n, partition=1)
            sent = time.perf_counter()
            plain_read = await readable(b"plain-%d" % n)
            began = time.perf_counter()
            await fenced.publish(0, b"fenced-%d" % n, value, [])
            done = time.perf_counter()
            fenced_read = await readable(b"fenced-%d" % n)
            if n >= 10:
                timings["acknowledged send"].append((sent - started) * 1000)
                timings["transaction"].append((done - began) * 1000)
                timings["send -> readable"].append((plain_read - started) * 1000)
                timings["transaction -> readable"].append((fenced_read - began) * 1000)
    finally:
        reading.cancel()
        await reader.stop()
        await plain.stop()
        await fenced.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=300)
    args = parser.parse_args()
    from streams.stack.apache_kafka import start_apache_kafka

    work = Path(tempfile.mkdtemp(prefix="restyle-fencing-"))
    service, bootstrap = start_apache_kafka(work / "kafka", work / "logs")
    try:
        timings = asyncio.run(measure(bootstrap, args.results))
    finally:
        service.stop()
    for way, ms in timings.items():
        p95 = statistics.quantiles(ms, n=20)[-1]
        print(f"{way:>23}: median {statistics.median(ms):6.2f} ms, p95 {p95:6.2f} ms "
              f"({len(ms)} results)")
    ratio = statistics.median(timings["transaction"]) / \
        statistics.median(timings["acknowledged send"])
    extra = statistics.median(timings["transaction"]) - \
        statistics.median(timings["acknowledged send"])
    readable = statistics.median(timings["transaction -> readable"]) - \
        statistics.median(timings["send -> readable"])
    print(f"fencing: ratio={ratio:.2f}x extra_ms_per_result={extra:.2f} "
          f"extra_ms_until_readable={readable:.2f}")


if __name__ == "__main__":
    main()
