"""Latency under mixed load: room makeovers submitted while a large background batch renders,
with the GPU worker's priority lanes off and on (one stack each, same run).

    python bench/mixed_load.py [--images 200] [--makeovers 3] [--broker tansu|kafka]
                               [--steps 2] [--size 64]

For each makeover: how long its render request waited for the GPU (`waits_ms.render`), in
batch renders' time (the median render of the batch's images). Target with lanes: it starts
rendering within two renders' time. The batch is cancelled once the makeovers are done.
Tiny random-weight models; one GPU worker.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.faults import Bench, _mask, _png, warmed  # noqa: E402


def batch_results(bench: Bench, batch_id: str) -> list[dict]:
    return [r for r in (json.loads(m.value()) for m in bench.collector.matching(
        "restyle.results", lambda m: b"batch_id" in m.value())) if r.get("batch_id") == batch_id]


def run(broker: str, lanes: bool, images: int, makeovers: int, steps: int, size: int) -> dict:
    env = {"RESTYLE_RENDER_LANES": str(lanes).lower(), "RESTYLE_DEFAULT_STEPS": str(steps),
           "RESTYLE_DEFAULT_WIDTH": str(size), "RESTYLE_DEFAULT_HEIGHT": str(size),
           "RESTYLE_BACKGROUND_MAX_SIDE": str(size)}
    bench = warmed(Bench(broker, extra_env=env))
    batch_id = f"mixed-{uuid.uuid4().hex[:8]}"
    try:
        bench.s3.put_object(Bucket="restyle", Key=f"mixed/{batch_id}/mask.png", Body=_mask())
        bench.s3.put_object(Bucket="restyle", Key=f"mixed/{batch_id}/photo.png", Body=_png(64))
        photo = f"s3://restyle/mixed/{batch_id}/photo.png"
        mask = f"s3://restyle/mixed/{batch_id}/mask.png"
        # Each image its own URI (a batch names an image once).
        specs = []
        for n in range(images):
            key = f"mixed/{batch_id}/in/{n}.png"
            bench.s3.copy_object(Bucket="restyle", Key=key,
                                 CopySource={"Bucket": "restyle",
                                             "Key": f"mixed/{batch_id}/photo.png"})
            specs.append({"uri": f"s3://restyle/{key}", "mask_image": mask})
        bench.publish({"pipeline": "background_replace", "batch_id": batch_id,
                       "prompt": "a lake", "images": specs,
                       "params": {"steps": steps}}, batch_id)
        deadline = time.monotonic() + 600
        while len(batch_results(bench, batch_id)) < 3:  # the batch renders steadily
            assert time.monotonic() < deadline, "the batch never started rendering"
            time.sleep(0.5)
        waits, renders_done_before = [], []
        for n in range(makeovers):
            job_id = f"makeover-{uuid.uuid4().hex[:8]}"
            done_at_submit = len(batch_results(bench, batch_id))
            bench.publish({"job_id": job_id, "pipeline": "room_makeover", "image": photo,
                           "style": "scandinavian", "params": {"seed": n}}, job_id)
            [result] = bench.collector.wait_for(
                "restyle.results", lambda m, j=job_id: m.key() == j.encode(), 600)
            outcome = json.loads(result.value())
            assert outcome["status"] == "done", outcome
            waits.append(outcome["result"]["waits_ms"].get("render"))
            renders_done_before.append(len(batch_results(bench, batch_id)) - done_at_submit)
            time.sleep(2)
        render_ms = statistics.median(
            r["result"]["timings_ms"]["render"] for r in batch_results(bench, batch_id)
            if r["status"] == "done")
        bench.api_call("DELETE", f"/batches/{batch_id}")
        return {"lanes": lanes, "broker": broker, "batch_images": images,
                "batch_render_ms_median": round(render_ms, 1),
                "makeover_render_wait_ms": waits,
                "wait_in_renders": [round(w / render_ms, 2) for w in waits],
                "batch_images_finished_while_each_makeover_ran": renders_done_before}
    finally:
        bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--makeovers", type=int, default=3)
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    rows = [run(args.broker, lanes, args.images, args.makeovers, args.steps, args.size)
            for lanes in (False, True)]
    for row in rows:
        print(json.dumps(row), flush=True)
    without, with_lanes = (max(r["wait_in_renders"]) for r in rows)
    print(f"mixed_load: worst_wait_without_lanes={without}x_render "
          f"worst_wait_with_lanes={with_lanes}x_render target<=2 broker={args.broker}")


if __name__ == "__main__":
    main()
