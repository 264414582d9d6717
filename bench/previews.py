"""What live previews cost a render, measured in one run (compare the printed ratios: this
machine is shared and noisy).

The same ControlNet render is timed without previews, with one every --every steps (the
default setting) and with one every step (the most a user can ask), alternating --rounds
times so the host's noise falls on all three. Each preview is made in the step callback as
the GPU worker makes it (gpu_agent/previews.py: the linear projection, or --decoder's tiny VAE)
and encoded as the data: URI the progress event carries. Also prints what one preview costs
alone, against the measured time of one denoising step.

    python bench/previews.py [--size 128] [--steps 20] [--every 5] [--rounds 3]
                             [--device auto] [--models DIR] [--decoder DIR]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from gpu_agent.engine import RenderEngine, Shot  # noqa: E402
from gpu_agent.previews import Previews  # noqa: E402
from schemas.params import RenderParams  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--preview-size", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--models", help="a directory of models (default: tiny ones built now)")
    parser.add_argument("--decoder", default="", help="a tiny VAE (AutoencoderTiny) to decode")
    args = parser.parse_args()

    from agents.models.tiny import diffusion_models

    models = diffusion_models(args.models)
    model, controlnet = str(models / "diffusion"), str(models / "controlnet_depth")
    engine = RenderEngine(args.device, args.dtype, cache_size=1)
    control = Image.radial_gradient("L").convert("RGB")
    params = RenderParams(steps=args.steps, guidance=7.5, controlnet_scale=1.0, seed=0,
                          width=args.size, height=args.size, negative_prompt="blurry",
                          num_images=1)
    settings = {"none": 0, f"every {args.every}": args.every, "every step": 1}
    makers = {name: Previews.load(every, args.preview_size, "sd15", args.decoder,
                                  engine.device, engine.dtype)
              for name, every in settings.items()}
    made: dict[str, int] = {}

    def render(name: str) -> float:
        previews = makers[name]
        made[name] = 0

        def on_step(step, total, latents):
            if previews.due(step, total):
                previews.data_uri(latents())
                made[name] += 1

        started = time.perf_counter()
        engine.render_shots(model, controlnet, [Shot("a cozy room", params, control=control,
                                                     on_step=on_step)])
        return time.perf_counter() - started

    render("every step")  # warm-up (loads the pipeline)
    walls: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name in settings:
            walls[name].append(render(name))

    latents = torch.randn(4, args.size // 8, args.size // 8)
    alone = []
    for _ in range(50):
        started = time.perf_counter()
        makers["every step"].data_uri(latents)
        alone.append(time.perf_counter() - started)

    base = statistics.median(walls["none"])
    step_ms = base / args.steps * 1000
    how = f"tiny VAE {args.decoder}" if args.decoder else "linear projection"
    print(f"previews: ControlNet render {args.size}x{args.size}, {args.steps} steps, on "
          f"{engine.device} ({engine.dtype}); previews {args.preview_size} px by {how}; "
          f"{args.rounds} rounds, alternating")
    for name in settings:
        wall = statistics.median(walls[name])
        print(f"  {name:>10}: {wall * 1000:8.1f} ms per render ({made[name]} previews)  "
              f"{wall / base:.3f}x")
    print(f"one preview alone: {statistics.median(alone) * 1000:.2f} ms (p50), against "
          f"{step_ms:.1f} ms per denoising step here: "
          f"{statistics.median(alone) * 1000 / step_ms * 100:.1f}% of a step")


if __name__ == "__main__":
    main()
