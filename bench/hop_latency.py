"""The cost of one stage hop: a message through a faust agent that forwards it to the next topic,
built exactly like restyle's stages (same app settings and consumer), timed from a plain
producer to a plain consumer. Prints the median round trip through 1 and through 5 agents in a
chain, and so the cost per hop, on the chosen broker.

    python bench/hop_latency.py [--broker tansu|kafka] [--messages 60] [--role gpu|cpu]
                                [--agents faust|aiokafka] [--gap-ms 0]

`--agents aiokafka` runs the same chain as plain aiokafka consumers in one event loop (no faust,
no consumer thread), the floor a hop could cost this client.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHAIN = 5
WORKER = """
import sys
from agents.pipelines import topic_names, topic_sets
from streams.core.app import create_app
from streams.core.settings import Settings
from streams.tracking.tables import open_tables
import faust

settings = Settings(kafka_bootstrap=sys.argv[1], state_dir=sys.argv[2], web_port=int(sys.argv[3]),
                    recovery_consistency_check=False)
wiring = create_app(settings, sys.argv[4], topic_names(settings, topic_sets()),
                    int(sys.argv[3]))
app = wiring.app
if sys.argv[4] == "cpu":
    open_tables(app, settings)  # the CPU worker's app carries its tables
topics = [app.topic(f"hop.{n}", key_serializer="raw", value_serializer="raw",
                    partitions=settings.partitions) for n in range({chain} + 1)]

def forward(source, target):
    async def agent(stream):
        async for event in stream.events():
            await target.send(key=event.key, value=event.value)
    agent.__name__ = agent.__qualname__ = f"hop{source}"
    app.agent(topics[source], name=f"hop{source}")(agent)

for n in range({chain}):
    forward(n, topics[n + 1])
faust.Worker(app, loglevel="info", quiet=True).execute_from_commandline()
""".replace("{chain}", str(CHAIN))

# The same chain without faust: one aiokafka consumer per hop, forwarding in the event loop.
PLAIN_WORKER = """
import asyncio
import sys

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def main():
    producer = AIOKafkaProducer(bootstrap_servers=sys.argv[1], linger_ms=0, acks="all")
    await producer.start()

    async def forward(source):
        consumer = AIOKafkaConsumer(f"hop.{source}", bootstrap_servers=sys.argv[1],
                                    group_id=f"plain-hop{source}", fetch_max_wait_ms=500,
                                    auto_offset_reset="latest")
        await consumer.start()
        async for message in consumer:
            await producer.send_and_wait(f"hop.{source + 1}", message.value, key=message.key)

    forwarding = [asyncio.ensure_future(forward(n)) for n in range({chain})]
    runner = web.AppRunner(web.Application())  # the port the bench waits for
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[3])).start()
    await asyncio.gather(*forwarding)


asyncio.run(main())
""".replace("{chain}", str(CHAIN))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument("--messages", type=int, default=60)
    parser.add_argument("--gap-ms", type=float, default=0,
                        help="idle time before each message (a job through the stack finds "
                             "its workers idle: ~300 ms since the last)")
    parser.add_argument("--role", choices=["gpu", "cpu"], default="gpu",
                        help="the app the agents run in: the GPU worker's (no tables) or the "
                             "CPU worker's (with the jobs, ingest and batch tables)")
    parser.add_argument("--agents", choices=["faust", "aiokafka"], default="faust",
                        help="faust agents as restyle's stages (default), or plain aiokafka "
                             "consumers in one event loop: the floor")
    args = parser.parse_args()

    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.stack.embedded import free_port, start_tansu, wait_for_port

    work = Path(tempfile.mkdtemp(prefix="restyle-hop-"))
    if args.broker == "kafka":
        from streams.stack.apache_kafka import start_apache_kafka

        broker, bootstrap = start_apache_kafka(work / "kafka", work / "logs")
    else:
        broker, bootstrap = start_tansu(work / "logs")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(f"hop.{n}", 4, 1) for n in range(CHAIN + 1)])
    for future in futures.values():
        future.result()
    # As `restyle up` runs them: Tansu answers a long-poll only when its wait expires.
    tansu_env = {} if args.broker == "kafka" else {"RESTYLE_FETCH_MAX_WAIT_MS": "20"}
    port = free_port()
    script = work / "hop_worker.py"
    script.write_text(WORKER if args.agents == "faust" else PLAIN_WORKER)
    worker = subprocess.Popen([sys.executable, str(script), bootstrap, str(work / "state"),
                               str(port), args.role], cwd=Path(__file__).resolve().parents[1],
                              env={**tansu_env, **os.environ,
                                   "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                              stdout=subprocess.DEVNULL, stderr=open(work / "worker.log", "wb"))
    try:
        wait_for_port(port, 60, worker, "hop worker")
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        consumers = {}
        for hops in (1, CHAIN):
            consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"hop-{hops}",
                                 "fetch.wait.max.ms": 5, "enable.auto.commit": False})
            consumer.assign([TopicPartition(f"hop.{hops}", p, OFFSET_END) for p in range(4)])
            consumers[hops] = consumer
        time.sleep(8)  # the worker joins its group and takes its partitions
        results = {}
        for hops, consumer in consumers.items():
            timings = []
            for n in range(args.messages + 5):
                time.sleep(args.gap_ms / 1000)
                key = f"m{hops}-{n}".encode()
                started = time.perf_counter()
                producer.produce("hop.0", json.dumps({"n": n}).encode(), key=key)
                producer.flush()
                deadline = time.monotonic() + 30
                while True:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"message {key!r} did not come through; see "
                                         f"{work / 'worker.log'}")
                    message = consumer.poll(0.01)
                    if message is not None and not message.error() and message.key() == key:
                        break
                if n >= 5:
                    timings.append((time.perf_counter() - started) * 1000)
            results[hops] = statistics.median(timings)
        per_hop = (results[CHAIN] - results[1]) / (CHAIN - 1)
        app = f"{args.role} app" if args.agents == "faust" else "plain aiokafka"
        print(f"broker {args.broker}, {app}: through 1 agent {results[1]:.1f} ms, "
              f"through {CHAIN} agents {results[CHAIN]:.1f} ms (median of {args.messages}"
              f"{f', {args.gap_ms:g} ms apart' if args.gap_ms else ''})")
        print(f"  cost per stage hop: {per_hop:.1f} ms")
    finally:
        worker.terminate()
        worker.wait(20)
        broker.stop()


if __name__ == "__main__":
    main()
