"""Fairness between tenants: how long tenant B's single image waits behind tenant A's large
batch, counted in A's renders that finish first, with batch pacing off (window 0: the whole
batch enters the pipeline at once) and on (RESTYLE_BATCH_WINDOW images at a time). One stack
per setting, same machine, same run.

    python bench/fairness.py [--images 60] [--window 8] [--broker tansu|kafka]

B is submitted once A's batch is flowing (a few of its images done). The bound with pacing:
B's job queues behind at most `window` of A's images at each stage, plus what the GPU worker
has already prefetched (RESTYLE_GPU_PREFETCH).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def batch(tenant: str, batch_id: str, uris: list[str], mask: str) -> bytes:
    return json.dumps({"pipeline": "background_replace", "batch_id": batch_id,
                       "tenant": tenant, "prompt": "a quiet garden", "mode": "PRECISE",
                       "images": [{"uri": u, "mask_image": mask} for u in uris],
                       "params": {"width": 64, "height": 64, "seed": 1}}).encode()


def run(window: int, images: int, broker: str, models: Path) -> dict:
    import boto3
    from confluent_kafka import Consumer, Producer
    from PIL import Image

    from streams.adapters.images import encode_png as png
    from streams.core.settings import Settings
    from streams.stack.embedded import free_port
    from streams.stack.up import RestyleStack

    state = Path(tempfile.mkdtemp(prefix="restyle-fairness-"))
    stack = RestyleStack(Settings(state_dir=state, web_port=free_port(), embedded_broker=broker),
                         models=str(models), extra_env={
                             "RESTYLE_BATCH_WINDOW": str(window), "RESTYLE_DEFAULT_STEPS": "2",
                             "HF_HUB_OFFLINE": "1", "RESTYLE_BACKGROUND_MAX_SIDE": "64"})
    endpoints = stack.start()
    try:
        s3 = boto3.client("s3", endpoint_url=endpoints["s3_endpoint"],
                          aws_access_key_id=endpoints["s3_access_key"],
                          aws_secret_access_key=endpoints["s3_secret_key"],
                          region_name="us-east-1")
        photo = Image.linear_gradient("L").convert("RGB").resize((64, 64))
        keep = Image.new("L", (64, 64), 0)
        keep.paste(255, (16, 16, 48, 48))
        s3.put_object(Bucket="restyle", Key="fair/photo.png", Body=png(photo))
        s3.put_object(Bucket="restyle", Key="fair/mask.png", Body=png(keep))
        mask = "s3://restyle/fair/mask.png"
        # Distinct URIs: one job per image (a batch runs a repeated URI once).
        uris = []
        for n in range(images + 3):
            s3.copy_object(Bucket="restyle", Key=f"fair/a/{n}.png",
                           CopySource={"Bucket": "restyle", "Key": "fair/photo.png"})
            uris.append(f"s3://restyle/fair/a/{n}.png")
        producer = Producer({"bootstrap.servers": endpoints["kafka_bootstrap"],
                             "partitioner": "murmur2_random"})
        results = Consumer({"bootstrap.servers": endpoints["kafka_bootstrap"],
                            "group.id": f"fairness-{uuid.uuid4().hex}",
                            "auto.offset.reset": "latest", "enable.auto.commit": False})
        results.subscribe(["restyle.results"])
        while not results.assignment():
            results.poll(0.2)

        def finished_until(predicate, timeout_s=900) -> list[tuple[str, str, float]]:
            seen = []
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                message = results.poll(0.2)
                if message is None or message.error():
                    continue
                body = json.loads(message.value())
                seen.append((body.get("batch_id"), body["status"], time.monotonic()))
                if predicate(seen):
                    return seen
            raise TimeoutError("the batches did not finish")

        # Warm-up: models load, caches fill.
        producer.produce("restyle.uploads", batch("warm", "warm", uris[images:images + 3], mask),
                         key=b"warm")
        producer.flush()
        finished_until(lambda seen: sum(b == "warm" for b, _, _ in seen) == 3)

        a_id, b_id = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
        producer.produce("restyle.uploads", batch("tenant-a", a_id, uris[:images], mask),
                         key=a_id.encode())
        producer.flush()
        flowing = finished_until(lambda seen: sum(b == a_id for b, _, _ in seen) >= 3)
        s3.copy_object(Bucket="restyle", Key="fair/b.png",
                       CopySource={"Bucket": "restyle", "Key": "fair/photo.png"})
        b_sent = time.monotonic()
        producer.produce("restyle.uploads",
                         batch("tenant-b", b_id, ["s3://restyle/fair/b.png"], mask),
                         key=b_id.encode())
        producer.flush()
        rest = finished_until(lambda seen: any(b == b_id for b, _, _ in seen))
        b_done = next(at for b, _, at in rest if b == b_id)
        ahead = sum(1 for b, _, at in rest if b == a_id and at <= b_done)
        a_done_before = sum(1 for b, _, _ in flowing if b == a_id)
        results.close()
        return {"window": window, "a_images": images, "a_done_when_b_sent": a_done_before,
                "a_renders_ahead_of_b": ahead, "b_wait_s": round(b_done - b_sent, 2),
                "a_left_when_b_done": images - a_done_before - ahead}
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    args = parser.parse_args()

    from streams.stack.up import ensure_tiny_models

    models = ensure_tiny_models(Path(tempfile.gettempdir()) / "restyle-bench-models")
    rows = [run(0, args.images, args.broker, models),
            run(args.window, args.images, args.broker, models)]
    for row in rows:
        print(json.dumps(row))
    off, on = rows
    print(f"tenant B's single image waited behind {off['a_renders_ahead_of_b']} of A's renders "
          f"without pacing and {on['a_renders_ahead_of_b']} with a window of {args.window} "
          f"(ratio {off['a_renders_ahead_of_b'] / max(1, on['a_renders_ahead_of_b']):.1f}x; "
          f"wait {off['b_wait_s']} s vs {on['b_wait_s']} s)")


if __name__ == "__main__":
    main()
