"""Per-job cost of running the room makeover through Kafka, against the same stages called
in-process with the same tiny models and the same S3 server, measured in one run.

    python bench/overhead.py [--jobs 12] [--warmup 2] [--steps 2] [--size 64]
                             [--broker tansu|kafka] [--split] [--no-fencing]
                             [--model-threads N]

Jobs alternate between the two paths. Prints the median end-to-end latency both ways, their
ratio and the per-job overhead (targets: <= 1.15x and <= 60 ms), the CPU time each process
spent per job, and the workers' peak RSS.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# One loop for every in-process job: the S3 client is bound to the loop it first ran on.
IN_PROCESS_LOOP = asyncio.new_event_loop()
# What each job asks for, on both paths.
UPLOAD = {"pipeline": "room_makeover", "style": "modern", "params": {"seed": 1}}


def in_process_job(settings, models, engine, index, storage, photo_uri: str, job_id: str):
    """The stages in order, in one process: what the pipeline does minus Kafka."""
    from agents.makeover import stages as makeover
    from schemas import MakeoverUpload
    from schemas.uris import join_uri
    from streams.adapters.images import decode_image, encode_png, fit_control, fit_within

    timings: dict[str, float] = {}

    class timed:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            self.started = time.perf_counter()

        def __exit__(self, *exc):
            timings[self.name] = timings.get(self.name, 0.0) + \
                (time.perf_counter() - self.started) * 1000

    # Blocking work runs in a thread, as the agents run it (asyncio.to_thread): the same
    # calls on the same threads. On this process's main thread, decoding the photo alone took
    # 40-86 ms against 21-23 ms in a thread (glibc's main heap, in a process this size), which
    # made the in-process side look ~60 ms slower than it is.
    thread = asyncio.to_thread

    async def run():
        with timed("analyze"):
            image = await thread(decode_image, await storage.get(photo_uri),
                                 settings.max_image_pixels)
            small = await thread(fit_within, image, settings.analysis_max_side)
            found = await thread(models.detector.detect, small, settings.detection_labels,
                                 settings.detection_threshold, settings.max_detections)
        with timed("embed"):
            found = await thread(makeover.embed_detections, small, found, models.embedder)
        with timed("retrieve"):
            matches = await makeover.match_products(found, index, settings.retrieve_k,
                                                    settings.match_score_floor)
        with timed("compose"):
            prompt = makeover.compose_prompt(settings.styles[UPLOAD["style"]], matches,
                                             settings.style_weight, settings.product_weight,
                                             settings.max_products_in_prompt)
        base = join_uri(settings.results_base, "bench-inproc", job_id)
        # The same parameters the intake resolves for the Kafka path's upload (defaults such
        # as the negative prompt included), so both paths render the same work.
        params = makeover.resolve_params(MakeoverUpload(**UPLOAD, image=photo_uri),
                                         settings.render_defaults, random.Random())
        with timed("depth"):  # at the render's size, as the depth stage makes it
            depth = await thread(lambda: fit_control(models.depth.estimate(small),
                                                     (params.width, params.height)))
            png = await thread(encode_png, depth)
        # Stored before the render, outside the stage's time (as request_render stores it).
        await storage.put(join_uri(base, "depth.png"), png, "image/png")
        with timed("render"):
            images = await thread(engine.render, settings.model_id("diffusion"),
                                  settings.model_id("controlnet_depth"), prompt, depth, params)
        with timed("reanalyze"):
            for n, generated in enumerate(images):
                await storage.put(join_uri(base, f"{n}.png"), await thread(encode_png, generated),
                                  "image/png")
                again = await thread(models.detector.detect, generated,
                                     settings.detection_labels, settings.detection_threshold,
                                     settings.max_detections)
                again = await thread(makeover.embed_detections, generated, again,
                                     models.embedder)
                await makeover.match_products(again, index, settings.retrieve_k,
                                              settings.match_score_floor)

    IN_PROCESS_LOOP.run_until_complete(run())
    return timings


def print_trace_breakdown(job_ids: list[str], receiver, ends_ms: dict[str, tuple]) -> None:
    """Where each traced job's time went, median ms over the jobs: its stages' spans from the
    moment the intake took the upload, then the gaps between them and inside the GPU worker's
    render (its step spans). ends_ms: per job, when the bench sent its upload, when the
    broker stamped its result record, and when the bench received it (epoch ms): the hops
    at either end of the job, which no worker's span covers."""
    starts: dict[str, list[float]] = {}
    ends: dict[str, list[float]] = {}
    gaps: dict[str, list[float]] = {}
    for job_id in job_ids:
        traced = {span.trace_id for span in receiver.of_job(job_id)}
        if len(traced) != 1:
            continue
        spans = sorted(receiver.of_trace(traced.pop()), key=lambda span: span.start_ms)
        first = {}
        for span in spans:
            first.setdefault(span.name, span)
        trackers = [span for span in spans if span.name == "tracker"]
        needed = ("intake", "analyze", "depth", "render", "model", "store images", "reanalyze")
        if not trackers or any(name not in first for name in needed):
            continue
        # The tracker's last turn: the job's end, with its result published.
        last = max(trackers, key=lambda span: span.end_ms)
        at = first["intake"].start_ms
        for span in [*first.values(), last]:
            name = "tracker (the result)" if span is last else span.name
            starts.setdefault(name, []).append(span.start_ms - at)
            ends.setdefault(name, []).append(span.end_ms - at)
        intake, analyze = first["intake"], first["analyze"]
        render, model, stored = first["render"], first["model"], first["store images"]
        reanalyze = first["reanalyze"]
        sent, stamped, received = ends_ms[job_id]
        for name, ms in (
                ("upload sent → the intake takes it", intake.start_ms - sent),
                ("intake → tracker", trackers[0].start_ms - intake.start_ms),
                ("tracker → analyze", analyze.start_ms - trackers[0].start_ms),
                ("render: taken → the model's turn", model.start_ms - render.start_ms),
                ("render: the model", model.end_ms - model.start_ms),
                ("render: model → images stored", stored.end_ms - model.end_ms),
                ("images stored → reanalyze takes the reply", reanalyze.start_ms - stored.end_ms),
                ("reanalyze → the tracker's last turn", last.start_ms - reanalyze.end_ms),
                ("the tracker's last turn (result published)", last.end_ms - last.start_ms),
                ("result record's timestamp → its turn ended", last.end_ms - stamped),
                ("the tracker's turn ended → the bench has it", received - last.end_ms)):
            gaps.setdefault(name, []).append(ms)
    if not gaps:
        print("trace: no complete job trace received")
        return
    jobs = len(next(iter(gaps.values())))
    print(f"a traced job, median ms from the intake taking the upload ({jobs} jobs):")
    for name in sorted(starts, key=lambda name: statistics.median(starts[name])):
        print(f"  {name:44s} {statistics.median(starts[name]):7.1f} → "
              f"{statistics.median(ends[name]):7.1f}")
    print("between and inside the stages, median ms:")
    for name, values in gaps.items():
        print(f"  {name:44s} {statistics.median(values):7.1f}")


def cpu_ms(pid: int) -> float:
    """CPU time (user + system) pid has used so far, in ms (10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per render")
    parser.add_argument("--size", type=int, default=64, help="render width and height")
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu",
                        help="the broker the stack starts: Tansu or Apache Kafka (Maven jars)")
    parser.add_argument("--split", action="store_true",
                        help="one topic per stage (RESTYLE_CHAIN_STAGES=false), as before "
                             "chaining")
    parser.add_argument("--no-fencing", action="store_true",
                        help="results without transactions on Apache Kafka too "
                             "(RESTYLE_RESULT_TRANSACTIONS=false): what fencing costs")
    parser.add_argument("--model-threads", type=int, default=None,
                        help="threads the models compute with, in the workers and in-process "
                             "alike (OMP_NUM_THREADS); default: what a worker picks, every "
                             "usable core but one")
    parser.add_argument("--trace", action="store_true",
                        help="the workers export their spans to a receiver in this process, "
                             "and the bench prints where a job's time goes between and inside "
                             "the stages (exporting costs the workers some CPU)")
    args = parser.parse_args()
    if args.size % 8:
        parser.error("--size must be a multiple of 8 (Stable Diffusion's latent grid)")
    if args.model_threads is not None and args.model_threads < 1:
        parser.error("--model-threads must be at least 1")
    # Before torch loads, as the workers do (streams/cli/main.py), so both paths run the same
    # OpenMP settings, thread count included (the workers inherit it; the in-process path
    # calls its models from threads, as the agents do).
    if args.model_threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.model_threads)
    from streams.cli.model_threads import openmp_for_model_threads

    openmp_for_model_threads()

    import interior_photos
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    from agents.models.stage_models import StageModels
    from agents.models.tiny import build_tiny_models
    from gpu_agent.engine import RenderEngine
    from streams.adapters.index.local import LocalIndex
    from streams.adapters.storage import Storage
    from streams.cli.demo import ingest_source, sample_catalog_dir
    from streams.core.settings import Settings, load_settings
    from streams.stack.embedded import free_port
    from streams.stack.up import RestyleStack

    # The render every job asks for, on both paths (the workers read it as their defaults).
    render = {"RESTYLE_DEFAULT_STEPS": str(args.steps), "RESTYLE_DEFAULT_WIDTH": str(args.size),
              "RESTYLE_DEFAULT_HEIGHT": str(args.size)}
    workers_env = {**render, "RESTYLE_CHAIN_STAGES": "false" if args.split else "true",
                   **({"RESTYLE_RESULT_TRANSACTIONS": "false"} if args.no_fencing else {})}
    receiver = None
    if args.trace:
        from tests.otlp import OtlpReceiver

        receiver = OtlpReceiver()
        workers_env.update({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
                            "OTEL_BSP_SCHEDULE_DELAY": "500"})
    work = Path(tempfile.mkdtemp(prefix="restyle-bench-"))
    models_dir = build_tiny_models(work / "models")
    os.environ.update(render)
    stack = RestyleStack(Settings(state_dir=work / "state", web_port=free_port(),
                                  embedded_broker=args.broker),
                         models=str(models_dir), extra_env=workers_env)
    endpoints = stack.start()
    try:
        settings = load_settings(state_dir=work / "state")  # completed from endpoints.json
        ingest_source(settings, str(sample_catalog_dir(work / "catalog")))
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoints["s3_endpoint"],
                          aws_access_key_id=endpoints["s3_access_key"],
                          aws_secret_access_key=endpoints["s3_secret_key"],
                          region_name="us-east-1")
        photo = Path(interior_photos.get_all_photos()[1]).read_bytes()
        total = args.warmup + args.jobs
        # A distinct object per job and path, so no worker-side cache serves a repeat.
        for n in range(total):
            for path in ("kafka", "local"):
                s3.put_object(Bucket="restyle", Key=f"bench/{path}/{n}.jpg", Body=photo)

        # Keyed by job id with murmur2, as the README asks of upstream systems: the job's
        # upload lands on the partition of its job, which its tracker owns.
        producer = Producer({"bootstrap.servers": endpoints["kafka_bootstrap"],
                             "linger.ms": 0, "partitioner": "murmur2_random"})
        # Apache Kafka answers a long-poll as soon as a result arrives; a short wait would only
        # have the broker serve ~100 idle fetches a second, on the cores the stages use. Tansu
        # answers when the wait expires, so there it must be short.
        consumer = Consumer({"bootstrap.servers": endpoints["kafka_bootstrap"],
                             "group.id": "bench", "enable.auto.commit": False,
                             "fetch.wait.max.ms": 500 if args.broker == "kafka" else 10})
        consumer.assign([TopicPartition("restyle.results", p, OFFSET_BEGINNING)
                         for p in range(settings.partitions)])

        # Its own client: asked of the consumer that polls for results, a watermark query
        # waits out its whole timeout.
        counter = Consumer({"bootstrap.servers": endpoints["kafka_bootstrap"],
                            "group.id": "bench-counter", "enable.auto.commit": False})

        def records_on_broker() -> Counter:
            """Every record the broker holds, per topic (end offsets, so a transaction's
            commit marker counts; the internal __consumer_offsets aside): the difference
            around a job is what it wrote, changelogs and DLQ included."""
            held = Counter()
            for topic in counter.list_topics(timeout=10).topics.values():
                if topic.topic.startswith("__"):
                    continue
                for partition in topic.partitions:
                    held[topic.topic] += counter.get_watermark_offsets(
                        TopicPartition(topic.topic, partition), timeout=10)[1]
            return held

        kafka_job_ids: list[str] = []
        pause_results = args.broker != "kafka"
        ends_ms: dict[str, tuple] = {}  # per job: upload sent, result stamped, result received

        def kafka_job(n: int) -> tuple[float, dict]:
            job_id = f"bench-{uuid.uuid4().hex[:8]}"
            kafka_job_ids.append(job_id)
            started, sent_ms = time.perf_counter(), time.time() * 1000
            producer.produce("restyle.uploads", json.dumps({
                **UPLOAD, "job_id": job_id, "image": f"s3://restyle/bench/kafka/{n}.jpg",
            }).encode(), key=job_id.encode())
            producer.flush()
            deadline = time.monotonic() + 120
            while True:
                if time.monotonic() > deadline:
                    raise SystemExit(f"no result for {job_id} within 120 s")
                message = consumer.poll(0.05)
                if message is not None and not message.error() and \
                        message.key() == job_id.encode():
                    break
            elapsed = (time.perf_counter() - started) * 1000
            ends_ms[job_id] = (sent_ms, message.timestamp()[1], time.time() * 1000)
            result = json.loads(message.value())
            if result["status"] != "done":
                raise SystemExit(f"job failed: {message.value()}")
            return elapsed, result["result"]

        models = StageModels(settings)
        models.warm_up()
        engine = RenderEngine()
        index = LocalIndex(settings.index_path)
        storage = Storage.from_settings(settings)

        # Jobs alternate between the two paths, one at a time, so the host's noise (a shared
        # machine) falls on both alike instead of on whichever path ran in the noisy minute.
        processes = {service.name: service.process.pid for service in stack.stack.services}
        processes["bench (client + in-process)"] = os.getpid()
        kafka_ms, stage_ms, kafka_stages, local_ms, local_stages, waits = [], [], [], [], [], []
        held = None  # the records on the broker before the first measured job
        # CPU is sampled for every process around both paths' jobs, so each side carries the
        # stack's idle load and the S3 server's share alike.
        kafka_cpu = {name: 0.0 for name in processes}
        local_cpu = {name: 0.0 for name in processes}
        for n in range(args.warmup + args.jobs):
            if n == args.warmup:
                # Counted once around all the measured jobs, not around each: a count asks
                # the broker for every partition's end offset (~660 requests on Apache Kafka),
                # and each job used to start right after one.
                held = records_on_broker()
            before = {name: cpu_ms(pid) for name, pid in processes.items()}
            elapsed, result = kafka_job(n)
            after = {name: cpu_ms(pid) for name, pid in processes.items()}
            # The tracker's last changelog writes may follow the result by a moment.
            time.sleep(0.3)
            # On Tansu the bench's result consumer stops fetching meanwhile: its polls (every
            # 10 ms there) would cost the broker CPU on the cores the in-process job runs on.
            # Not on Apache Kafka, where it long-polls: a fetch in flight at the pause is
            # answered up to 500 ms later, and librdkafka drops what it brings after the resume
            # and fetches again, so the next job's result reached the bench 28-70 ms late.
            if pause_results:
                consumer.pause(consumer.assignment())
            # Sampled again here: the settle above is neither path's.
            local_before = {name: cpu_ms(pid) for name, pid in processes.items()}
            started = time.perf_counter()
            stages = in_process_job(settings, models, engine, index, storage,
                                    f"s3://restyle/bench/local/{n}.jpg", f"job-{n}")
            local_elapsed = (time.perf_counter() - started) * 1000
            local_after = {name: cpu_ms(pid) for name, pid in processes.items()}
            if pause_results:
                consumer.resume(consumer.assignment())
                time.sleep(0.1)  # until its fetches come and go again (10 ms each)
            if n < args.warmup:
                continue
            kafka_ms.append(elapsed)
            stage_ms.append(sum(result["timings_ms"].values()))
            kafka_stages.append(result["timings_ms"])
            waits.append(result.get("waits_ms") or {})
            for name in processes:
                kafka_cpu[name] += after[name] - before[name]
                local_cpu[name] += local_after[name] - local_before[name]
            local_ms.append(local_elapsed)
            local_stages.append(stages)
        written = records_on_broker()
        written.subtract(held)
        records_per_job = sum(written.values()) / args.jobs
        consumer.close()
        counter.close()

        kafka, local = statistics.median(kafka_ms), statistics.median(local_ms)
        print(f"broker: {stack.broker}; jobs measured: {args.jobs} each way "
              f"(after {args.warmup} warm-up); renders {args.size}x{args.size}, "
              f"{args.steps} steps; {os.environ['OMP_NUM_THREADS']} model threads; stages "
              f"{'split, one topic each' if args.split else 'chained (the default)'}")
        print(f"in-process median: {local:8.1f} ms/job")
        print(f"through Kafka median: {kafka:8.1f} ms/job")
        print(f"ratio kafka/in-process: {kafka / local:6.3f}x   (target <= 1.15x)")
        print(f"overhead per job: {kafka - local:8.1f} ms      (target <= 60 ms)")
        inside = statistics.median(stage_ms)
        print(f"  of the Kafka path: {inside:.1f} ms inside stages, "
              f"{kafka - inside:.1f} ms between them (hops, claim-check I/O, tracking)")
        print("per stage, median ms (in-process / through Kafka):")
        for stage in local_stages[0]:
            inproc = statistics.median(t[stage] for t in local_stages)
            kafka_stage = statistics.median(t.get(stage, float("nan")) for t in kafka_stages)
            print(f"  {stage:10s} {inproc:8.1f} / {kafka_stage:8.1f}")
        if waits and waits[0]:
            print("waits on each stage's topic (sent → picked up), median ms:")
            for stage in waits[0]:
                print(f"  {stage:10s} {statistics.median(w.get(stage, 0.0) for w in waits):8.1f}")
            print(f"  total      {statistics.median(sum(w.values()) for w in waits):8.1f} "
                  "(the rest of the time between stages is intake, tracking and the work "
                  "around each stage body: claim-check reads and writes, (de)serialisation)")
        print("CPU time per job, each process, mean ms (user + system; in-process / through "
              "Kafka):")
        for name in processes:
            print(f"  {name:28s} {local_cpu[name] / args.jobs:8.1f} / "
                  f"{kafka_cpu[name] / args.jobs:8.1f}")
        print(f"  {'all processes':28s} {sum(local_cpu.values()) / args.jobs:8.1f} / "
              f"{sum(kafka_cpu.values()) / args.jobs:8.1f}")
        for service in stack.stack.services:
            if "worker" in service.name:
                print(f"peak RSS {service.name}: {peak_rss_mb(service.process.pid):8.1f} MB")
        print(f"peak RSS in-process run: {peak_rss_mb(os.getpid()):8.1f} MB")
        broker_cpu = sum(kafka_cpu[name] for name in processes if "broker" in name.lower()
                         or "kafka" in name.lower() or "tansu" in name.lower())
        print(f"Kafka records written per job: {records_per_job:.1f} (mean; every topic, "
              f"changelogs included); broker CPU per job: "
              f"{broker_cpu / args.jobs:.1f} ms")
        print("  per topic: " + ", ".join(f"{topic} {count / args.jobs:.1f}" for topic, count
                                          in written.most_common() if count))
        if receiver is not None:
            time.sleep(2.0)  # the workers export their spans every 0.5 s
            print_trace_breakdown(kafka_job_ids[args.warmup:], receiver, ends_ms)
        fenced = stack.env.get("RESTYLE_RESULT_TRANSACTIONS") == "true"
        print(f"overhead: ratio={kafka / local:.3f}x per_job_ms={kafka - local:.1f} "
              f"broker={args.broker}" + (" results=transactional" if fenced else ""))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
