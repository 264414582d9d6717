"""A background-replacement batch through the whole stack with tiny models: images per second
with one GPU worker and with two (and their ratio), and each GPU worker's duty cycle: the share
of the time it held render requests that it spent inside the model call (target >= 95%).

    python bench/background_batch.py [--images 50] [--size 128] [--steps 4] [--broker tansu]
                                     [--masks image|prompt] [--compare-prefetch]

Masks are given as keep-mask images (made here with the real u2netp), so the CPU stage is fast
and the GPU workers are the bottleneck, as they are in production. On this CPU-only machine the
"GPU" workers share two cores, which caps what a second worker can add.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gpu_metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    for name in ("restyle_gpu_model_seconds_total", "restyle_gpu_holding_seconds_total"):
        match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
        found[name] = float(match.group(1)) if match else 0.0
    return found


def run_batch(endpoints: dict, producer, images: list[dict], size: int) -> tuple[str, float, dict]:
    batch_id = f"bench-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    producer.produce("restyle.uploads", json.dumps({
        "pipeline": "background_replace", "batch_id": batch_id, "images": images,
        "prompt": "a sunny beach", "mode": "PRECISE",
        "params": {"width": size, "height": size, "seed": 1}}).encode(), key=batch_id.encode())
    producer.flush()
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(
                    f"{endpoints['status_url']}/batches/{batch_id}",
                    headers={"Authorization": f"Bearer {endpoints['api_key']}"})) as response:
                body = json.loads(response.read())
            if body["status"] != "running":
                return batch_id, time.perf_counter() - started, body
        except urllib.error.HTTPError:
            pass
        time.sleep(0.1)


def measure(gpu_workers: int, args, work: Path, models_dir: Path, photos: list, masks: list,
            prefetch: int = 3):
    from confluent_kafka import Producer

    from streams.core.settings import Settings
    from streams.stack.embedded import free_port
    from streams.stack.up import RestyleStack

    env = {"RESTYLE_QUALITY_STEPS": json.dumps({"standard": args.steps, "premium": args.steps}),
           "RESTYLE_GPU_PREFETCH": str(prefetch)}
    state = work / f"state-{gpu_workers}-{prefetch}"
    stack = RestyleStack(Settings(state_dir=state, web_port=free_port(),
                                  embedded_broker=args.broker),
                         models=str(models_dir), gpu_workers=gpu_workers, extra_env=env)
    endpoints = stack.start()
    try:
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoints["s3_endpoint"],
                          aws_access_key_id=endpoints["s3_access_key"],
                          aws_secret_access_key=endpoints["s3_secret_key"],
                          region_name="us-east-1")

        def upload(tag: str, count: int) -> list[dict]:
            specs = []
            for n in range(count):
                photo, mask = photos[n % len(photos)], masks[n % len(masks)]
                s3.put_object(Bucket="restyle", Key=f"{tag}/{n}.png", Body=photo)
                if args.masks == "prompt":  # the CPU stage runs the detector and SAM
                    specs.append({"uri": f"s3://restyle/{tag}/{n}.png", "mask_prompt": "bus"})
                    continue
                s3.put_object(Bucket="restyle", Key=f"{tag}/masks/{n}.png", Body=mask)
                specs.append({"uri": f"s3://restyle/{tag}/{n}.png",
                              "mask_image": f"s3://restyle/{tag}/masks/{n}.png"})
            return specs

        producer = Producer({"bootstrap.servers": endpoints["kafka_bootstrap"]})
        run_batch(endpoints, producer, upload("warm", 2 * gpu_workers),
                  args.size)
        measured = upload("bench", args.images)
        ports = [s.port for s in stack.stack.services if s.name.startswith("gpu-worker")]
        before = [gpu_metrics(p) for p in ports]
        _, seconds, body = run_batch(endpoints, producer, measured, args.size)
        after = [gpu_metrics(p) for p in ports]
        duties = []
        for b, a in zip(before, after):
            model = a["restyle_gpu_model_seconds_total"] - b["restyle_gpu_model_seconds_total"]
            held = a["restyle_gpu_holding_seconds_total"] - \
                b["restyle_gpu_holding_seconds_total"]
            duties.append((model, held))
        return seconds, body, duties
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--size", type=int, default=128, help="generation side, px")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument("--masks", choices=["image", "prompt"], default="image",
                        help="keep-mask images (made here with u2netp), or a mask prompt the "
                             "CPU stage resolves with the detector and SAM")
    parser.add_argument("--compare-prefetch", action="store_true",
                        help="also run one GPU worker holding one request at a time")
    args = parser.parse_args()

    import interior_photos
    import numpy as np
    from PIL import Image

    from agents.models.segment import SalientSegmenter
    from agents.models.tiny import build_tiny_models

    work = Path(tempfile.mkdtemp(prefix="restyle-bench-bg-"))
    models_dir = build_tiny_models(work / "models")
    salient = SalientSegmenter.from_pretrained("bundled")
    photos, masks = [], []
    for path in interior_photos.get_all_photos()[:10]:
        photo = Image.open(path).convert("RGB")
        photo.thumbnail((512, 512))
        keep = salient.main_object(photo)
        if not 0.02 < keep.mean() < 0.98:  # a usable mask: some object, some background
            keep = np.zeros_like(keep)
            keep[photo.height // 4: 3 * photo.height // 4, photo.width // 4: 3 * photo.width // 4] = True
        photos.append(png(photo))
        masks.append(png(Image.fromarray(keep.astype(np.uint8) * 255)))

    rates = {}
    for gpu_workers, prefetch in ((1, 3), (2, 3), (1, 1)):
        if prefetch == 1 and not args.compare_prefetch:
            continue
        seconds, body, duties = measure(gpu_workers, args, work, models_dir, photos, masks,
                                        prefetch)
        counts = body["counts"]
        rate = counts["succeeded"] / seconds
        rates[(gpu_workers, prefetch)] = rate
        print(f"{gpu_workers} GPU worker(s), prefetch {prefetch}: {counts['succeeded']}/"
              f"{counts['total']} images in {seconds:.1f} s = {rate:.2f} images/s")
        for n, (model, held) in enumerate(duties):
            duty = model / held if held else float("nan")
            print(f"  gpu-worker-{n}: {model:.1f} s in the model of {held:.1f} s holding work "
                  f"-> duty cycle {duty:.1%}  (target >= 95%); of the batch's wall time "
                  f"{model / seconds:.1%}")
    print(f"two GPU workers / one: {rates[(2, 3)] / rates[(1, 3)]:.2f}x")
    if (1, 1) in rates:
        print(f"prefetch 3 / prefetch 1 (one worker): {rates[(1, 3)] / rates[(1, 1)]:.2f}x")


if __name__ == "__main__":
    main()
