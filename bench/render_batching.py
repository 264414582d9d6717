"""Batched renders under a queued load, measured in one run (compare the printed ratios: this
machine is shared and noisy).

A queue of `--requests` ControlNet renders (distinct prompts and seeds, one image each) is
served through the GPU worker's batching (gpu_agent/batching.py) with the real engine, once
with batches of 1 and once with batches of up to `--max-batch`, alternating `--rounds` times
so the host's noise falls on both. Prints images/s both ways, their ratio, and the p50/p95
latency of a request from the moment it was queued (what batching costs the first of a queue,
and saves the last).

    python bench/render_batching.py [--requests 16] [--max-batch 4] [--size 64] [--steps 4]
                                    [--device auto] [--models DIR]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from gpu_agent.batching import RenderBatches  # noqa: E402
from gpu_agent.engine import RenderEngine, Shot  # noqa: E402
from gpu_agent.turns import BATCH, ModelTurns  # noqa: E402
from schemas.params import RenderParams  # noqa: E402


async def serve_queue(engine: RenderEngine, model: str, controlnet: str, shots: list[Shot],
                      max_batch: int) -> tuple[float, list[float]]:
    """Every shot queued at once; returns the wall time and each request's latency (s)."""
    batches = RenderBatches(ModelTurns(), max_batch=max_batch)

    async def call(members: list[Shot]) -> list:
        return await asyncio.to_thread(engine.render_shots, model, controlnet, members)

    started = time.perf_counter()
    latencies: list[float] = []

    async def one(shot: Shot) -> None:
        await batches.run(BATCH, "same", shot, call)
        latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one(shot) for shot in shots))
    return time.perf_counter() - started, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--models", help="a directory of models (default: tiny ones built now)")
    args = parser.parse_args()

    from agents.models.tiny import diffusion_models

    models = diffusion_models(args.models)
    model, controlnet = str(models / "diffusion"), str(models / "controlnet_depth")
    engine = RenderEngine(args.device, args.dtype, cache_size=1)
    control = Image.radial_gradient("L").convert("RGB")
    params = RenderParams(steps=args.steps, guidance=7.5, controlnet_scale=1.0, seed=0,
                          width=args.size, height=args.size, negative_prompt="blurry",
                          num_images=1)
    shots = [Shot(f"(a cozy room)1.0, (sofa number {n})0.8",
                  params.model_copy(update={"seed": n}), control=control)
             for n in range(args.requests)]
    asyncio.run(serve_queue(engine, model, controlnet, shots[:2], 2))  # warm-up

    walls: dict[int, list[float]] = {1: [], args.max_batch: []}
    latencies: dict[int, list[float]] = {1: [], args.max_batch: []}
    for _ in range(args.rounds):
        for size in walls:
            wall, waits = asyncio.run(serve_queue(engine, model, controlnet, shots, size))
            walls[size].append(wall)
            latencies[size] += waits

    print(f"batched renders: {args.requests} queued ControlNet requests, {args.size}x"
          f"{args.size}, {args.steps} steps, on {engine.device} ({engine.dtype}); "
          f"{args.rounds} rounds, alternating")
    rates = {}
    for size in walls:
        rates[size] = args.requests / statistics.median(walls[size])
        lat = sorted(latencies[size])
        print(f"  max batch {size:2d}: {rates[size]:7.2f} images/s   latency p50 "
              f"{statistics.median(lat) * 1000:8.1f} ms   p95 "
              f"{lat[int(0.95 * (len(lat) - 1))] * 1000:8.1f} ms")
    p50 = {size: statistics.median(latencies[size]) for size in walls}
    print(f"batching: throughput {rates[args.max_batch] / rates[1]:.2f}x, "
          f"p50 latency {p50[args.max_batch] / p50[1]:.2f}x")


if __name__ == "__main__":
    main()
