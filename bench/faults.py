"""The fault suite: restyle's promise (every job ends done or failed, once, with a cause) under
faults, measured in one run on one stack.

    python bench/faults.py [--broker tansu|kafka] [--kills 20] [--outage-s 40]
                           [--every-s 1] [--rate 300] [--status-clients python,vegeta]
                           [--streams 500] [--broker-restarts 3]
                           [--broker-down-s 5] [--pauses 10] [--pause-s 25] [--no-fencing]
                           [--only kills,duplicate,outage,status,sse,broker,pauses]

- kills: a steady stream of jobs (a conditioned generation every `--every-s`); kill -9 a CPU
  worker at random moments, `--kills` times, then the GPU worker as often; each is started
  again at once (as a supervisor would). Counts lost jobs (no result), stuck jobs (not ended),
  duplicate result events (and whether the duplicates are identical) and images in storage
  that no result names. Targets: 0 lost, 0 stuck, 0 duplicates.
- pauses: two CPU workers; SIGSTOP one of them for `--pause-s` (longer than the session
  timeout: the group gives its partitions to the other, which replays the events it had not
  committed), then SIGCONT, `--pauses` times. The woken worker still holds events the other
  has handled: a "zombie" tracker. Counts duplicate results, with results fenced (Apache
  Kafka: RESTYLE_RESULT_TRANSACTIONS, on by default there) or not (`--no-fencing`).
- duplicate: a render request delivered twice (published again as it was) -> one render, one
  result.
- outage: the S3 server stopped for `--outage-s` seconds in the middle of a batch, then
  started again -> each image ends done or failed with a storage code, the batch report is
  written afterwards and nothing stays `reporting`.
- broker: kill -9 the broker mid-stream `--broker-restarts` times and start it again after
  `--broker-down-s` on its own storage (Apache Kafka's log; Tansu with its S3 storage engine,
  on a stack of its own) -> the jobs resume: 0 lost, 0 stuck, 0 duplicates.
- status: GET /jobs/{id} at `--rate` requests/s from a separate process while jobs run:
  p50/p99 latency (target p99 <= 25 ms) and how many answered 200, from each of
  `--status-clients` in turn: `python` (asyncio and aiohttp) and `vegeta` (a constant-rate load
  tester written in Go, built into .tools/bin when Go is there). On a two-core machine the
  Python client takes CPU the stack needs, so the pair tells the server's latency from the
  client's.
- sse: `--streams` Server-Sent-Events streams open at once on ten jobs (one rendering, a
  progress event a step; nine waiting for the GPU): the CPU worker's CPU use and event-loop lag (its
  restyle_event_loop_lag_seconds) over 20 s without the streams and 20 s with them.

Tiny random-weight models, 64 px, 2 steps: the figures are about the plumbing, not the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TERMINAL = ("done", "failed", "cancelled")


class Bench:
    """One stack, a producer, a collector of results and job events."""

    def __init__(self, broker: str, gpu_workers: int = 1, broker_storage: str = "memory",
                 extra_env: dict[str, str] | None = None, cpu_workers: int = 1):
        import boto3
        from confluent_kafka import Producer

        from streams.core.settings import Settings, load_settings
        from streams.stack.embedded import free_port
        from streams.stack.up import RestyleStack, ensure_tiny_models
        from tests.conftest import TopicCollector

        models = ensure_tiny_models(Path(tempfile.gettempdir()) / "restyle-bench-models")
        self.state = Path(tempfile.mkdtemp(prefix="restyle-faults-"))
        self.stack = RestyleStack(
            Settings(state_dir=self.state, web_port=free_port(), embedded_broker=broker,
                     embedded_broker_storage=broker_storage),
            models=str(models), cpu_workers=cpu_workers, gpu_workers=gpu_workers,
            trainer_workers=0, extra_env={
                "RESTYLE_DEFAULT_STEPS": "2", "RESTYLE_DEFAULT_WIDTH": "64",
                "RESTYLE_DEFAULT_HEIGHT": "64", "RESTYLE_CONDITION_MAX_SIDE": "64",
                "RESTYLE_BACKGROUND_MAX_SIDE": "64", "HF_HUB_OFFLINE": "1",
                # The SSE fan-out opens hundreds of streams as one tenant (default cap: 20).
                "RESTYLE_TENANT_MAX_STREAMS": "1000",
                # A worker killed mid-job leaves its group after this long (default 30 s):
                # its partitions move to the replacement sooner.
                "RESTYLE_SESSION_TIMEOUT_S": "10", "RESTYLE_HEARTBEAT_INTERVAL_S": "2",
                # Every render step told (the default paces them): the duplicate case counts
                # renders by their first step, and the SSE fan-out carries the heavier load.
                "RESTYLE_PROGRESS_INTERVAL_S": "0",
                **(extra_env or {})})
        self.endpoints = self.stack.start()
        self.settings = load_settings(state_dir=self.state)
        self.s3 = boto3.client("s3", endpoint_url=self.endpoints["s3_endpoint"],
                               aws_access_key_id=self.endpoints["s3_access_key"],
                               aws_secret_access_key=self.endpoints["s3_secret_key"],
                               region_name="us-east-1")
        self.producer = Producer({"bootstrap.servers": self.endpoints["kafka_bootstrap"],
                                  "message.timeout.ms": 20000, "log_level": 2,
                                  "partitioner": "murmur2_random"})
        self.collector = TopicCollector(self.endpoints["kafka_bootstrap"],
                                        ["restyle.results", "restyle.job-events",
                                         "restyle.render-requests"], self.settings.partitions)
        photo = _png(64)
        self.s3.put_object(Bucket="restyle", Key="faults/photo.png", Body=photo)
        self.photo = "s3://restyle/faults/photo.png"

    def publish(self, body: dict, key: str, topic: str = "restyle.uploads") -> None:
        """Publish and wait for the broker's acknowledgement; raise when there is none (a job
        the broker never took is not the pipeline's to lose)."""
        outcome: list = []
        self.producer.produce(topic, json.dumps(body).encode(), key=key.encode(),
                              on_delivery=lambda error, _message: outcome.append(error))
        self.producer.flush(30)
        if outcome != [None]:
            raise RuntimeError(f"publishing {key} failed: {outcome or 'no acknowledgement'}")

    def submit(self, job_id: str) -> None:
        self.publish({"job_id": job_id, "pipeline": "condition", "image": self.photo,
                      "params": {"seed": 7}}, job_id)

    def results(self, job_id: str) -> list[dict]:
        return [json.loads(m.value()) for m in self.collector.matching(
            "restyle.results", lambda m: m.key() == job_id.encode())]

    def api(self, path: str) -> tuple[int, dict]:
        return self.api_call("GET", path)

    def api_call(self, method: str, path: str) -> tuple[int, dict]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.endpoints["status_url"] + path, method=method,
                                         headers={"Authorization":
                                                  f"Bearer {self.endpoints['api_key']}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as answer:
            return answer.code, {}
        except OSError:
            return 0, {}

    def worker(self, prefix: str):
        return next(s for s in self.stack.stack.services if s.name.startswith(prefix))

    def kill_and_restart(self, prefix: str) -> None:
        service = self.worker(prefix)
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(10)
        again = self.start_again(service)  # as a supervisor would
        self.stack.wait_healthy([again.port], 300)

    def start_again(self, service):
        """A process stopped or killed, started again the same way (same command, ports and
        data), once it listens."""
        from streams.stack.embedded import wait_for_port

        again = service.start_again()
        self.stack.stack.services[self.stack.stack.services.index(service)] = again
        wait_for_port(again.port, 120, again.process, again.name)
        return again

    def stored_images(self) -> set[str]:
        found, token = set(), None
        while True:
            page = self.s3.list_objects_v2(Bucket="restyle", Prefix="results/",
                                           **({"ContinuationToken": token} if token else {}))
            found |= {f"s3://restyle/{o['Key']}" for o in page.get("Contents", [])
                      if o["Key"].endswith(".png")}
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]

    def where_uploaded(self, job_ids: list[str]) -> list[dict]:
        """Where each job's upload lies on restyle.uploads, and how far the CPU workers' group
        has committed on that partition: to tell an upload never read from one read, committed
        and dropped."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        wanted, found = {j.encode() for j in job_ids}, []
        reader = Consumer({"bootstrap.servers": self.endpoints["kafka_bootstrap"],
                           "group.id": "restyle-faults-trace", "enable.auto.commit": False,
                           "log_level": 2})
        try:
            topic, partitions = "restyle.uploads", range(self.settings.partitions)
            reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            quiet = 0
            while quiet < 10 and len(found) < len(wanted):
                message = reader.poll(0.5)
                if message is None or message.error():
                    quiet += 1
                    continue
                quiet = 0
                if message.key() in wanted:
                    found.append({"job_id": message.key().decode(),
                                  "partition": message.partition(),
                                  "offset": message.offset()})
            group = Consumer({"bootstrap.servers": self.endpoints["kafka_bootstrap"],
                              "group.id": self.settings.app_id, "log_level": 2})
            try:
                committed = {tp.partition: tp.offset for tp in group.committed(
                    [TopicPartition(topic, p) for p in partitions], timeout=10)}
            finally:
                group.close()
            for upload in found:
                upload["group_committed"] = committed.get(upload["partition"])
        finally:
            reader.close()
        return found

    def close(self) -> None:
        self.collector.close()
        self.stack.stop()


def _png(side: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def account(bench: Bench, job_ids: list[str], settle_s: float, quiet_s: float = 180) -> dict:
    """Wait for every job to end (up to settle_s, and while results keep coming: a backlog
    drains, a job that will never end does not hold the count up past quiet_s without
    progress); then count what the promise forbids."""
    deadline = time.monotonic() + settle_s
    ended, last_progress = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_ended = sum(1 for j in job_ids if bench.results(j))
        if now_ended == len(job_ids):
            break
        if now_ended != ended:
            ended, last_progress = now_ended, time.monotonic()
        elif time.monotonic() - last_progress > quiet_s:
            break
        time.sleep(2)
    lost = [j for j in job_ids if not bench.results(j)]
    answers = {j: bench.api(f"/jobs/{j}") for j in lost}
    # Never became a job at all (the status API does not know it): lost before the table.
    unknown = [j for j in lost if answers[j][0] == 404]
    stuck = [j for j in lost if j not in unknown and answers[j][1].get("status") not in TERMINAL]
    duplicated = {j: bench.results(j) for j in job_ids if len(bench.results(j)) > 1}
    identical = all(all(_same(r, rs[0]) for r in rs) for rs in duplicated.values())
    # Every URI a result names (its images, and the control map or masks it was made from).
    named = {uri for j in job_ids for r in bench.results(j) for uri in _uris(r)}
    prefixes = tuple(f"s3://restyle/results/{j}/" for j in job_ids if bench.results(j))
    # Images an ended job wrote under its prefix that its result does not name (a render
    # repeated after a kill writes the same names: only a stray name counts).
    orphans = [uri for uri in bench.stored_images()
               if uri.startswith(prefixes) and uri not in named and "/raw/" not in uri]
    statuses = [bench.results(j)[0]["status"] for j in job_ids if bench.results(j)]
    failed = {j: (bench.results(j)[0]["error"] or {}).get("code") for j in job_ids
              if bench.results(j) and bench.results(j)[0]["status"] == "failed"}
    ended_without_result = [j for j in lost if j not in stuck and j not in unknown]
    where = bench.where_uploaded(unknown[:5]) if unknown else []
    return {"jobs": len(job_ids), "done": statuses.count("done"),
            "failed": statuses.count("failed"), "lost": len(ended_without_result),
            "never_admitted": len(unknown), "stuck": len(stuck), "duplicate_results": len(duplicated),
            "duplicates_identical": identical, "orphan_images": len(orphans),
            "failures": sorted(set(failed.values()) - {None}),
            # A few ids of each, to look them up in the logs and the status API.
            "examples": {"lost": ended_without_result[:5], "never_admitted": unknown[:5],
                         "stuck": stuck[:5],
                         "duplicated": list(duplicated)[:5], "failed": list(failed)[:5],
                         "orphans": orphans[:3]},
            "never_admitted_uploads": where, "state_dir": str(bench.state)}


def _uris(value) -> list[str]:
    if isinstance(value, str):
        return [value] if value.startswith("s3://") else []
    if isinstance(value, dict):
        value = list(value.values())
    return [uri for item in value for uri in _uris(item)] if isinstance(value, list) else []


def _same(a: dict, b: dict) -> bool:
    keep = ("status", "error")
    return {k: a.get(k) for k in keep} == {k: b.get(k) for k in keep} and \
        [i["uri"] for i in (a.get("result") or {}).get("images", [])] == \
        [i["uri"] for i in (b.get("result") or {}).get("images", [])]


def under_stream(bench: Bench, prefix: str, every_s: float, settle_s: float, faults) -> dict:
    """faults() runs while a job is submitted every every_s; then every job submitted is
    accounted for (account()), with what faults() returned added."""
    job_ids, stop, feeder = feed(bench, prefix, every_s)
    try:
        figures = faults()
    finally:
        stop.set()
        feeder.join()
    return {**account(bench, list(job_ids), settle_s=settle_s), **figures}


def kills(bench: Bench, count: int, every_s: float, seed: int = 5) -> dict:
    rng = random.Random(seed)

    def kill_each_worker() -> dict:
        rows = {}
        for prefix in ("cpu-worker", "gpu-worker"):
            started = time.monotonic()
            for _ in range(count):
                time.sleep(rng.uniform(2.0, 8.0))
                bench.kill_and_restart(prefix)
            rows[prefix] = round(time.monotonic() - started, 1)
        return {"kill_phase_s": rows}

    return under_stream(bench, "kill", every_s, 2400, kill_each_worker)


def pauses(bench: Bench, count: int, pause_s: float, every_s: float, seed: int = 7) -> dict:
    """SIGSTOP one of the two CPU workers for pause_s, then SIGCONT, `count` times, while jobs
    stream: each time the group moves its partitions to the other while it sleeps, and it
    wakes holding events the other has handled since."""
    rng = random.Random(seed)

    def pause_a_cpu_worker() -> dict:
        paused_s = []
        for _ in range(count):
            time.sleep(rng.uniform(4.0, 10.0))
            worker = bench.worker(f"cpu-worker-{rng.randrange(2)}")
            worker.process.send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            time.sleep(pause_s)
            worker.process.send_signal(signal.SIGCONT)
            paused_s.append(round(time.monotonic() - stopped_at, 1))
        time.sleep(10)
        return {"paused_s": paused_s}

    summary = under_stream(bench, "pause", every_s, 900, pause_a_cpu_worker)
    summary["exits"] = list(bench.stack.stack.exits)  # a worker the pauses made exit
    return summary


def feed(bench: Bench, prefix: str, every_s: float = 0.5):
    """Submit a job every every_s seconds until the returned event is set; the job ids land in
    the returned list (the thread is joined by stop_feeding)."""
    job_ids: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            job_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
            try:
                bench.submit(job_id)
            except Exception:  # the broker is down: an upstream system would try again
                time.sleep(every_s)
                continue
            job_ids.append(job_id)
            time.sleep(every_s)

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    return job_ids, stop, thread


def broker_restart(bench: Bench, restarts: int, down_s: float, seed: int = 11) -> dict:
    """kill -9 the broker mid-stream, `restarts` times, each time starting it again after
    down_s on its own storage: the jobs resume, none is lost."""
    rng = random.Random(seed)

    def restart_the_broker() -> dict:
        outages = []
        for _ in range(restarts):
            time.sleep(rng.uniform(5.0, 15.0))
            broker = bench.worker("apache-kafka" if "kafka" in bench.stack.broker else "tansu")
            broker.process.send_signal(signal.SIGKILL)
            broker.process.wait(10)
            down_at = time.monotonic()
            time.sleep(down_s)
            bench.start_again(broker)
            outages.append(round(time.monotonic() - down_at, 1))
        time.sleep(10)
        return {"broker": bench.stack.broker, "broker_down_s": outages}

    return under_stream(bench, "broker", 0.5, 600, restart_the_broker)


def duplicate(bench: Bench) -> dict:
    """A render request published twice, as it was: one render, one result."""
    job_id = f"dup-{uuid.uuid4().hex[:10]}"
    bench.submit(job_id)
    [request] = bench.collector.wait_for(
        "restyle.render-requests", lambda m: m.key() == job_id.encode(), 120)
    bench.producer.produce("restyle.render-requests", request.value(), key=request.key(),
                           headers=request.headers())
    bench.producer.flush()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not bench.results(job_id):
        time.sleep(0.5)
    time.sleep(5)  # what the second delivery would cause, had it rendered again
    ticks = [json.loads(m.value()) for m in bench.collector.matching(
        "restyle.job-events", lambda m: m.key() == job_id.encode())]
    steps = [t["progress"]["step"] for t in ticks if t.get("progress")]
    return {"deliveries": 2, "renders": steps.count(1), "results": len(bench.results(job_id)),
            "status": (bench.results(job_id) or [{}])[0].get("status")}


def outage(bench: Bench, outage_s: float, images: int = 12) -> dict:
    """The S3 server down for outage_s in the middle of a batch."""
    batch_id = f"outage-{uuid.uuid4().hex[:8]}"
    mask = _mask()
    bench.s3.put_object(Bucket="restyle", Key=f"faults/{batch_id}/mask.png", Body=mask)
    uris = []
    for n in range(images):
        bench.s3.put_object(Bucket="restyle", Key=f"faults/{batch_id}/{n}.png", Body=_png(64))
        uris.append(f"s3://restyle/faults/{batch_id}/{n}.png")
    bench.publish({"pipeline": "background_replace", "batch_id": batch_id, "prompt": "a lake",
                   "images": [{"uri": u, "mask_image": f"s3://restyle/faults/{batch_id}/mask.png"}
                              for u in uris]}, batch_id)
    bench.collector.wait_for("restyle.results",
                             lambda m: json.loads(m.value()).get("batch_id") == batch_id, 300)
    s3 = bench.worker("seaweedfs")
    s3.stop()
    down_at = time.monotonic()
    time.sleep(outage_s)
    bench.start_again(s3)
    down_for = round(time.monotonic() - down_at, 1)
    deadline = time.monotonic() + 600
    batch = {}
    while time.monotonic() < deadline:
        status, batch = bench.api(f"/batches/{batch_id}")
        if status == 200 and batch["status"] != "running" and not batch["reporting"]:
            break
        time.sleep(1)
    codes = sorted({(r.get("error") or {}).get("code") for r in
                    (json.loads(m.value()) for m in bench.collector.matching(
                        "restyle.results", lambda m: json.loads(m.value()).get("batch_id")
                        == batch_id)) if r["status"] == "failed"})
    report = None
    if batch.get("report"):
        key = f"batches/{batch_id}/report.json"
        report = json.loads(bench.s3.get_object(Bucket="restyle", Key=key)["Body"].read())
    return {"images": images, "s3_down_s": down_for, "batch_status": batch.get("status"),
            "counts": batch.get("counts"), "reporting": batch.get("reporting"),
            "report_written": report is not None, "failure_codes": codes}


def _mask() -> bytes:
    import io

    from PIL import Image

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


LOAD_CLIENT = r"""
import asyncio, json, sys, time
import aiohttp

async def main(url, key, job_ids, rate, seconds):
    latencies, codes = [], {}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async def one(job_id):
            started = time.perf_counter()
            try:
                async with session.get(f"{url}/jobs/{job_id}") as response:
                    await response.read()
                    codes[response.status] = codes.get(response.status, 0) + 1
            except Exception as exc:
                codes[type(exc).__name__] = codes.get(type(exc).__name__, 0) + 1
            latencies.append(time.perf_counter() - started)
        tasks, start, n = [], time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            # Open loop: requests leave on schedule whether or not earlier ones answered.
            due = start + n / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(job_ids[n % len(job_ids)])))
            n += 1
        await asyncio.gather(*tasks)
    print(json.dumps({"latencies": latencies, "codes": codes, "sent": n}))

url, key, ids, rate, seconds = sys.argv[1], sys.argv[2], sys.argv[3].split(","), \
    float(sys.argv[4]), float(sys.argv[5])
asyncio.run(main(url, key, ids, rate, seconds))
"""


SSE_CLIENT = r"""
import asyncio, json, sys, time
import aiohttp

async def main(url, key, job_ids, count, seconds):
    events, opened, ended, refused, per_job = [0], [0], [0], {}, {}
    ready = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers={
            "Authorization": f"Bearer {key}"}) as session:
        async def one(job_id):
            async with session.get(f"{url}/jobs/{job_id}/events") as response:
                if response.status != 200:
                    refused[response.status] = refused.get(response.status, 0) + 1
                    return
                opened[0] += 1
                if opened[0] + sum(refused.values()) == count:
                    ready.set()
                async for line in response.content:
                    if line.startswith(b"event:"):
                        events[0] += 1
                        per_job[job_id] = per_job.get(job_id, 0) + 1
                ended[0] += 1
        tasks = [asyncio.create_task(one(job_ids[n % len(job_ids)])) for n in range(count)]
        await asyncio.wait_for(ready.wait(), 120)
        print(json.dumps({"opened": opened[0], "refused": refused}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # open until the bench has measured
        still_open = opened[0] - ended[0]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"events": events[0], "open_when_measured": still_open,
                      "events_per_job": sorted(per_job.values(), reverse=True)}), flush=True)

url, key, ids, count, seconds = sys.argv[1], sys.argv[2], sys.argv[3].split(","), \
    int(sys.argv[4]), float(sys.argv[5])
asyncio.run(main(url, key, ids, count, seconds))
"""


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics_page(bench: Bench) -> str:
    """The CPU worker's /metrics, as Prometheus reads it."""
    import urllib.request

    with urllib.request.urlopen(bench.endpoints["status_url"] + "/metrics", timeout=10) as page:
        return page.read().decode()


def loop_lag(bench: Bench) -> tuple[float, dict[float, float]]:
    """The CPU worker's event-loop lag histogram: (sum, {upper bound: cumulative count})."""
    text = metrics_page(bench)
    total, buckets = 0.0, {}
    for line in text.splitlines():
        if line.startswith("restyle_event_loop_lag_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("restyle_event_loop_lag_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.split()[-1])
    return total, buckets


def gc_pauses(bench: Bench) -> dict[str, float]:
    """The CPU worker's cycle-collector pauses (streams/core/heap.py) per generation: runs,
    seconds, and runs of 10 ms or less ({"runs_2": ..., "seconds_2": ..., "short_2": ...})."""
    import re

    text = metrics_page(bench)
    figures = {f"{kind}_{generation}": 0.0 for kind in ("runs", "seconds", "short")
               for generation in range(3)}
    for kind, pattern in (("runs", r'_count\{generation="(\d)"\} (\S+)'),
                          ("seconds", r'_sum\{generation="(\d)"\} (\S+)'),
                          ("short", r'_bucket\{generation="(\d)",le="0.01"\} (\S+)')):
        for generation, value in re.findall("^restyle_gc_pause_seconds" + pattern, text, re.M):
            figures[f"{kind}_{generation}"] = float(value)
    return figures


def measured_window(bench: Bench, seconds: float) -> dict:
    """The CPU worker's CPU use and event-loop lag over `seconds` of what runs now."""
    pid = bench.worker("cpu-worker").process.pid
    cpu_before, (lag_before, buckets_before) = cpu_seconds(pid), loop_lag(bench)
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    cpu_after, (lag_after, buckets_after) = cpu_seconds(pid), loop_lag(bench)
    counts = {bound: buckets_after[bound] - buckets_before.get(bound, 0)
              for bound in buckets_after}
    probes = counts[float("inf")] or 1
    p99 = next(bound for bound in sorted(counts) if counts[bound] >= 0.99 * probes)
    return {"cpu_percent": round(100 * (cpu_after - cpu_before) / elapsed, 1),
            "loop_lag_mean_ms": round(1000 * (lag_after - lag_before) / probes, 2),
            "loop_lag_p99_ms_at_most": p99 * 1000, "probes": int(probes)}


def sse_fanout(bench: Bench, streams: int, seconds: float = 20) -> dict:
    """`streams` SSE streams open on ten jobs, as their users would watch them: one renders
    (a progress event a step), nine wait for the GPU. The CPU worker's CPU and event-loop lag
    without the streams and with them."""
    held = [f"sse-{uuid.uuid4().hex[:8]}" for _ in range(10)]
    for job_id in held:  # long renders: they queue behind each other, their streams stay open
        bench.publish({"job_id": job_id, "pipeline": "condition", "image": bench.photo,
                       "params": {"steps": 150, "width": 128, "height": 128}}, job_id)
    deadline = time.monotonic() + 120
    while not all(bench.api(f"/jobs/{j}")[0] == 200 for j in held):
        assert time.monotonic() < deadline, "the held jobs never showed in the status API"
        time.sleep(0.5)
    try:
        quiet = measured_window(bench, seconds)
        client = subprocess.Popen([sys.executable, "-c", SSE_CLIENT,
                                   bench.endpoints["status_url"], bench.endpoints["api_key"],
                                   ",".join(held), str(streams), str(seconds)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        opened = json.loads(client.stdout.readline())
        busy = measured_window(bench, seconds)
        client.stdin.write("\n")
        client.stdin.flush()
        received = json.loads(client.stdout.readline())
        client.wait(60)
    finally:
        for job_id in held:
            bench.api_call("DELETE", f"/jobs/{job_id}")
    return {"streams": streams, **opened, **received, "without_streams": quiet,
            "with_streams": busy,
            "cpu_ratio": round(busy["cpu_percent"] / max(quiet["cpu_percent"], 0.1), 2)}


# The load client written in Go (one constant-rate HTTP load tester among the well-kept ones),
# built into .tools/bin like the tests' kustomize.
VEGETA = "github.com/tsenart/vegeta/v12@v12.13.0"


def vegeta() -> str | None:
    """The vegeta binary: on PATH, in .tools/bin, or built there with Go (None without Go)."""
    tools = Path(__file__).resolve().parents[1] / ".tools" / "bin"
    found = shutil.which("vegeta") or (str(tools / "vegeta")
                                       if (tools / "vegeta").exists() else None)
    if found or not shutil.which("go"):
        return found
    subprocess.run(["go", "install", VEGETA], env={**os.environ, "GOBIN": str(tools)},
                   check=True, capture_output=True, timeout=600)
    return str(tools / "vegeta")


def python_load(url: str, key: str, job_ids: list[str], rate: float, seconds: float) -> dict:
    """An asyncio/aiohttp client in a process of its own: every latency, in seconds."""
    done = subprocess.run([sys.executable, "-c", LOAD_CLIENT, url, key, ",".join(job_ids),
                           str(rate), str(seconds)], capture_output=True, text=True,
                          timeout=seconds + 120)
    measured = json.loads(done.stdout)
    latencies = sorted(measured["latencies"])
    return {"sent": measured["sent"], "codes": measured["codes"],
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1),
            "max_ms": round(latencies[-1] * 1000, 1)}


def vegeta_load(binary: str, url: str, key: str, job_ids: list[str], rate: float,
                seconds: float) -> dict:
    """vegeta at a constant rate (its requests leave on schedule, however late the answers:
    no coordinated omission), in a process that takes a fraction of the CPU of Python's."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as targets:
        targets.write("".join(f"GET {url}/jobs/{job_id}\n" for job_id in job_ids))
        targets.flush()
        attack = subprocess.Popen(
            [binary, "attack", f"-rate={rate:g}/s", f"-duration={seconds:g}s", "-timeout=30s",
             f"-targets={targets.name}", "-header", f"Authorization: Bearer {key}"],
            stdout=subprocess.PIPE)
        report = subprocess.run([binary, "report", "-type=json"], stdin=attack.stdout,
                                capture_output=True, text=True, timeout=seconds + 120)
        attack.wait(60)
    measured = json.loads(report.stdout)
    latencies = {name: round(ns / 1e6, 1) for name, ns in measured["latencies"].items()}
    return {"sent": measured["requests"], "codes": measured["status_codes"],
            "p50_ms": latencies["50th"], "p99_ms": latencies["99th"],
            "max_ms": latencies["max"]}


def status_load(bench: Bench, rate: float, seconds: float = 20,
                clients: tuple[str, ...] = ("python", "vegeta")) -> dict:
    """GET /jobs/{id} at `rate` per second from another process while jobs run, from each
    client in turn: the Python one shares the two cores with the stack and costs it CPU; the
    Go one (vegeta) much less, so the pair tells the server's latency from the client's."""
    job_ids = [f"load-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    for job_id in job_ids:
        bench.submit(job_id)
    for job_id in job_ids:  # ended before the load starts: each client meets the same stream
        bench.collector.wait_for("restyle.results",
                                 lambda m, job_id=job_id: m.key() == job_id.encode(), 300)
    url, key = bench.endpoints["status_url"], bench.endpoints["api_key"]

    def load(client: str) -> dict | str:
        gc_before = gc_pauses(bench)
        if client == "python":
            measured = python_load(url, key, job_ids, rate, seconds)
        elif client == "vegeta":
            binary = vegeta()
            if binary is None:
                return "no vegeta on PATH and no Go to build it"
            measured = vegeta_load(binary, url, key, job_ids, rate, seconds)
        else:
            raise ValueError(f"unknown status client {client!r} (python or vegeta)")
        # what Python's cycle collector stopped the CPU worker for meanwhile, per
        # generation: runs, runs over 10 ms, milliseconds in all
        return {**measured, "gc": gc_during(gc_before, gc_pauses(bench))}

    # The same load with no job running first: what the jobs add to the latency
    measured = {"rate_per_s": rate, f"{clients[0]}_no_jobs": load(clients[0])}
    stop = threading.Event()

    def stream() -> None:  # jobs keep running while the API is under load
        while not stop.is_set():
            bench.submit(f"load-{uuid.uuid4().hex[:8]}")
            time.sleep(0.5)

    feeder = threading.Thread(target=stream, daemon=True)
    feeder.start()
    try:
        for client in clients:
            measured[client] = load(client)
    finally:
        stop.set()
        feeder.join()
    return measured


def gc_during(before: dict[str, float], after: dict[str, float]) -> dict[int, list]:
    def grew(name: str) -> float:
        return after[name] - before[name]

    return {generation: [int(grew(f"runs_{generation}")),
                         int(grew(f"runs_{generation}") - grew(f"short_{generation}")),
                         round(grew(f"seconds_{generation}") * 1000, 1)]
            for generation in range(3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument("--kills", type=int, default=20)
    # One job a second: what one worker of each kind clears between kills on two cores (at
    # two a second the backlog grew by 1273 jobs over the 40 kills).
    parser.add_argument("--every-s", type=float, default=1.0)
    parser.add_argument("--outage-s", type=float, default=40)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--status-clients", default="python,vegeta",
                        help="the load clients of the status case, one after the other")
    parser.add_argument("--status-s", type=float, default=20,
                        help="how long the status API is loaded at --rate")
    parser.add_argument("--broker-restarts", type=int, default=3)
    parser.add_argument("--broker-down-s", type=float, default=5)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--pauses", type=int, default=10)
    # Longer than the bench stack's 10 s session timeout, with room for the rebalance.
    parser.add_argument("--pause-s", type=float, default=25)
    parser.add_argument("--no-fencing", action="store_true",
                        help="RESTYLE_RESULT_TRANSACTIONS=false on Apache Kafka too")
    parser.add_argument("--only", default="kills,duplicate,outage,status,sse,broker,pauses")
    parser.add_argument("--broker-storage", choices=["memory", "s3"], default="memory",
                        help="Tansu's storage engine for the kills and pauses stacks (s3: its "
                             "topics outlive the run, in the state dir)")
    args = parser.parse_args()
    chosen = set(args.only.split(","))

    if chosen - {"broker", "pauses"}:
        bench = warmed(Bench(args.broker, broker_storage=args.broker_storage))
        try:
            if "duplicate" in chosen:
                print("duplicate", json.dumps(duplicate(bench)), flush=True)
            if "status" in chosen:
                clients = tuple(args.status_clients.split(","))
                print("status", json.dumps(status_load(bench, args.rate, args.status_s,
                                                       clients)), flush=True)
            if "sse" in chosen:
                print("sse", json.dumps(sse_fanout(bench, args.streams)), flush=True)
            if "outage" in chosen:
                print("outage", json.dumps(outage(bench, args.outage_s)), flush=True)
            if "kills" in chosen:
                print("kills", json.dumps(kills(bench, args.kills, args.every_s)), flush=True)
        finally:
            bench.close()
    if "broker" in chosen:
        # A stack of its own: Tansu keeps its topics in S3 here, so that it has something to
        # come back to (in memory they end with the process).
        bench = warmed(Bench(args.broker, broker_storage="s3"))
        try:
            print("broker", json.dumps(broker_restart(bench, args.broker_restarts,
                                                      args.broker_down_s)), flush=True)
        finally:
            bench.close()
    if "pauses" in chosen:
        fencing = {"RESTYLE_RESULT_TRANSACTIONS": "false"} if args.no_fencing else {}
        bench = warmed(Bench(args.broker, cpu_workers=2, extra_env=fencing,
                             broker_storage=args.broker_storage))
        try:
            summary = pauses(bench, args.pauses, args.pause_s, args.every_s)
            summary["fencing"] = bench.stack.env.get("RESTYLE_RESULT_TRANSACTIONS") == "true"
            print("pauses", json.dumps(summary), flush=True)
        finally:
            bench.close()


def warmed(bench: Bench) -> Bench:
    """Models loaded, the first job's caches filled."""
    try:
        bench.submit("warm-up")
        bench.collector.wait_for("restyle.results", lambda m: m.key() == b"warm-up", 300)
    except BaseException:
        bench.close()
        raise
    return bench


if __name__ == "__main__":
    main()
