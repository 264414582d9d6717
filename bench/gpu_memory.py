"""One copy of the base model per GPU worker: the weights every warm pipeline holds, shared vs
loaded separately, measured in one run.

    python bench/gpu_memory.py [--models DIR] [--device auto|cpu|cuda] [--dtype auto|float16]

Warms what a GPU worker warms with every ControlNet (depth, canny, seg) and the avatar
pipeline, once with RESTYLE_SHARE_BASE_MODEL on and once off, and prints:
- the parameter bytes resident (each tensor counted once) for both, against one pipeline's
  base (UNet + VAE + text encoders) plus the ControlNets; target: shared <= 1.2x that;
- on CUDA, the device memory allocated after warming, for both;
- whether a depth render is the same, bit for bit, with shared and separate components.

Without --models, the tiny random-weight models are built (the bytes are tiny too; the ratios
are what carries over to real weights, whose UNet is most of a pipeline).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONTROLNETS = ("controlnet_depth", "controlnet_canny", "controlnet_seg")


def weights(module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def warm(models: Path, device: str, dtype: str, shared: bool):
    from gpu_agent.engine import RenderEngine

    engine = RenderEngine(device, dtype, cache_size=len(CONTROLNETS), share_base=shared)
    for task in CONTROLNETS:
        engine.pipeline(str(models / "diffusion"), str(models / task))
    engine.text2img_pipeline(str(models / "diffusion"))
    return engine


def depth_render(engine, models: Path):
    import numpy as np
    from PIL import Image

    from schemas.params import RenderParams

    params = RenderParams(steps=2, guidance=7.5, controlnet_scale=1.0, seed=3, width=64,
                          height=64, negative_prompt="blurry", num_images=1)
    control = Image.radial_gradient("L").convert("RGB").resize((64, 64))
    [image] = engine.render(str(models / "diffusion"), str(models / "controlnet_depth"),
                            "(a cozy room)1.0, (green sofa)0.8", control, params)
    return np.asarray(image)


def device_bytes(device: str) -> int | None:
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def main() -> None:
    import numpy as np
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    from agents.models.tiny import diffusion_models

    models = diffusion_models(args.models)

    figures = {}
    renders = {}
    for shared in (True, False):
        before = device_bytes("cuda" if torch.cuda.is_available() else "cpu")
        engine = warm(models, args.device, args.dtype, shared)
        after = device_bytes(engine.device)
        figures[shared] = {"resident_bytes": engine.resident_bytes(),
                           "device_allocated_bytes": None if after is None
                           else after - (before or 0)}
        renders[shared] = depth_render(engine, models)
        if not shared:
            pipes = engine.loaded_pipelines()
            one_base = sum(weights(pipes[0].components[name]) for name in
                           ("unet", "vae", "text_encoder", "text_encoder_2")
                           if pipes[0].components.get(name) is not None)
            controlnets = sum(weights(p.controlnet) for p in pipes if hasattr(p, "controlnet"))
        device = engine.device
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    target = one_base + controlnets
    shared_ratio = figures[True]["resident_bytes"] / target
    separate_ratio = figures[False]["resident_bytes"] / target
    print(f"device={device} models={models}")
    print(f"one base (unet+vae+text encoders): {one_base / 2**20:.1f} MiB; "
          f"controlnets: {controlnets / 2**20:.1f} MiB")
    for shared in (True, False):
        row = figures[shared]
        allocated = row["device_allocated_bytes"]
        print(f"{'shared' if shared else 'separate'}: resident {row['resident_bytes'] / 2**20:.1f}"
              f" MiB" + (f", cuda allocated {allocated / 2**20:.1f} MiB" if allocated else ""))
    identical = bool(np.array_equal(renders[True], renders[False]))
    print(f"depth render identical shared vs separate: {identical}")
    print(f"gpu_memory: shared_ratio={shared_ratio:.2f}x separate_ratio={separate_ratio:.2f}x "
          f"target<=1.2x identical={identical} device={device}")


if __name__ == "__main__":
    main()
