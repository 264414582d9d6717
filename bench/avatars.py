"""Personalized avatars, measured in one run on tiny random-weight models (real diffusers, peft
and restyle code; ratios, since this machine is shared and noisy):

(a) switching between N warm adapters on one base pipeline vs loading a full fine-tuned
    pipeline per model, as the AWS guidance's multi-model endpoint does (target >= 20x faster);
(b) a cold adapter (fetched from storage and loaded) vs a warm one;
(c) a mixed workload of 20 models with skewed (Zipf) popularity on 2 GPU workers: the adapter
    cache's hit rate and images/s with requests keyed by model (affinity) vs by job;
(d) training steps/s and the trainer process's peak RSS.

    python bench/avatars.py [--adapters 6] [--requests 200] [--resident 4] [--train-steps 30]
                            [--full-size]

On tiny models a full pipeline loads in a fraction of a second, so the ratio in (a) is a floor.
--full-size also measures (a) and (b) on a pipeline with Stable Diffusion 1.5's architecture
and size (860M-parameter UNet, CLIP ViT-L text encoder, its VAE; random weights built from
configs, saved in float16 as SD 1.5 is distributed): what loading and switching cost at the
real size (several GB of disk and RAM, minutes on a CPU).
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "a photo of zqk person"


def face_photos():
    import skimage.data
    from PIL import Image, ImageOps

    face = Image.fromarray(skimage.data.astronaut()).crop((100, 0, 356, 256)).resize((64, 64))
    return [face, ImageOps.mirror(face)]


def train_params(seed: int, steps: int = 3):
    from schemas.avatars import ResolvedTrainParams

    return ResolvedTrainParams(
        steps=steps, learning_rate=1e-2, rank=4, alpha=4, resolution=64, batch_size=1,
        train_text_encoder=False, prior_preservation=False, class_images=1,
        prior_loss_weight=1.0, mixed_precision="no", gradient_checkpointing=False,
        checkpoint_every=10_000, seed=seed)


def make_adapters(base: str, count: int, out: Path, first: int = 0,
                  steps: int = 3) -> list[Path]:
    from gpu_agent.trainer import TrainingRun, train

    paths = []
    for n in range(first, first + count):
        directory = out / f"adapter-{n}"
        train(TrainingRun(base, face_photos(), PROMPT, "a photo of person",
                          train_params(n, steps), device="cpu")).save(str(directory))
        paths.append(directory / "pytorch_lora_weights.safetensors")
    return paths


def full_pipelines(base: str, adapters: list[Path], out: Path) -> list[Path]:
    """Each adapter fused into a whole saved pipeline: one model per person, as the seed's
    multi-model endpoint holds them."""
    from diffusers import StableDiffusionPipeline

    dirs = []
    for n, adapter in enumerate(adapters):
        pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.load_lora_weights(str(adapter.parent))
        pipe.fuse_lora()
        pipe.unload_lora_weights()
        target = out / f"full-{n}"
        pipe.save_pretrained(target)
        dirs.append(target)
    return dirs


def render_params():
    from schemas.params import RenderParams

    return RenderParams(steps=2, guidance=7.5, controlnet_scale=1.0, seed=1, width=64,
                        height=64, negative_prompt="", num_images=1)


def touch_every_page(pipe) -> None:
    """Read every weight once, as moving a pipeline to a GPU does: safetensors maps files
    lazily, so a CPU load alone would read almost nothing."""
    import torch

    with torch.no_grad():
        for model in (pipe.unet, pipe.vae, pipe.text_encoder):
            for parameter in model.parameters():
                parameter.data.view(-1)[::1024].sum()


def switching_vs_full_load(base: str, adapters: list[Path], fulls: list[Path],
                           rounds: int, render: bool = True) -> None:
    from diffusers import StableDiffusionPipeline

    from gpu_agent.engine import RenderEngine

    engine = RenderEngine("cpu", "float32", resident_adapters=len(adapters))
    pipe = engine.text2img_pipeline(base)
    resident = engine.adapters(base)
    for n, path in enumerate(adapters):  # all warm
        resident.activate(pipe, f"m{n}", path, 1.0)
    switches = []
    for _ in range(rounds):
        for n, path in enumerate(adapters):
            started = time.perf_counter()
            resident.activate(pipe, f"m{n}", path, 1.0)
            switches.append(time.perf_counter() - started)
    loads = []
    for _ in range(max(1, rounds // 4)):
        for directory in fulls:
            started = time.perf_counter()
            full = StableDiffusionPipeline.from_pretrained(directory, safety_checker=None,
                                                           requires_safety_checker=False)
            touch_every_page(full)
            loads.append(time.perf_counter() - started)
    switch, load = statistics.median(switches), statistics.median(loads)
    print(f"(a) switch to a warm adapter: {switch * 1000:.2f} ms (median of {len(switches)}); "
          f"load a full fine-tuned pipeline: {load * 1000:.1f} ms (median of {len(loads)}): "
          f"switching is {load / switch:.0f}x faster (target >= 20x)")
    if not render:
        return
    params = render_params()
    started = time.perf_counter()
    for n, path in enumerate(adapters):
        engine.avatar(base, f"m{n}", path, PROMPT, params)
    warm_request = (time.perf_counter() - started) / len(adapters)
    print(f"    a whole warm request (switch + 2-step 64 px render): "
          f"{warm_request * 1000:.1f} ms, {(load + warm_request - switch) / warm_request:.1f}x "
          f"faster than loading the model first")


def cold_vs_warm(base: str, adapters: list[Path], storage_dir: Path) -> None:
    from gpu_agent.adapters import AdapterFiles
    from gpu_agent.engine import RenderEngine

    async def fetch(uri: str) -> bytes:  # a file store stands in for S3 here
        return await asyncio.to_thread(Path(uri).read_bytes)

    engine = RenderEngine("cpu", "float32", resident_adapters=len(adapters))
    pipe = engine.text2img_pipeline(base)
    resident = engine.adapters(base)
    files = AdapterFiles(storage_dir, 1 << 30)
    colds, warms = [], []
    for n, path in enumerate(adapters):
        started = time.perf_counter()
        local = asyncio.run(files.local(str(path), fetch))
        resident.activate(pipe, f"c{n}", local, 1.0)
        colds.append(time.perf_counter() - started)
    for n, path in enumerate(adapters):
        started = time.perf_counter()
        resident.activate(pipe, f"c{n}", files.path_for(str(path)), 1.0)
        warms.append(time.perf_counter() - started)
    cold, warm = statistics.median(colds), statistics.median(warms)
    print(f"(b) cold adapter (fetch + load_lora_weights): {cold * 1000:.1f} ms; warm "
          f"(set_adapters): {warm * 1000:.2f} ms; cold is {cold / warm:.0f}x the warm cost")


def partition_of(key: str, partitions: int) -> int:
    from aiokafka.partitioner import murmur2

    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def mixed_workload(base: str, adapters: list[Path], models: int, requests: int,
                   resident: int, workers: int = 2, partitions: int = 8) -> None:
    """Each request is really run on the engine of the worker its key's partition belongs to
    (partitions split evenly between the workers, as a consumer group assigns them); the
    workers run in parallel, so images/s is requests over the busiest worker's time."""
    from gpu_agent.engine import RenderEngine

    rng = random.Random(7)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(models)]
    chosen = rng.choices(range(models), weights, k=requests)
    params = render_params()
    for label, keyed_by_model in (("affinity (key = model)", True),
                                  ("no affinity (key = job)", False)):
        engines = [RenderEngine("cpu", "float32", resident_adapters=resident)
                   for _ in range(workers)]
        for engine in engines:
            engine.text2img_pipeline(base)
        busy = [0.0] * workers
        served = [0] * workers
        for n, model in enumerate(chosen):
            key = f"tenant/model-{model}" if keyed_by_model else f"job-{n}"
            worker = partition_of(key, partitions) * workers // partitions
            started = time.perf_counter()
            engines[worker].avatar(base, f"model-{model}", adapters[model % len(adapters)],
                                   PROMPT, params)
            busy[worker] += time.perf_counter() - started
            served[worker] += 1
        loads = sum(e.adapters(base).loads for e in engines)
        hits = sum(e.adapters(base).hits for e in engines)
        print(f"(c) {label}: adapter hit rate {hits / (hits + loads):.0%} ({loads} loads), "
              f"{requests / max(busy):.1f} images/s, requests per worker {served}")


def _train_child(base: str, steps: int, queue) -> None:
    from gpu_agent.trainer import TrainingRun, train

    run = TrainingRun(base, face_photos(), PROMPT, "a photo of person",
                      train_params(0, steps), device="cpu")
    train(run)  # warm: weights read, kernels chosen
    started = time.perf_counter()
    adapter = train(run)
    elapsed = time.perf_counter() - started
    queue.put((adapter.steps / elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def training_rate(base: str, steps: int) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_train_child, args=(base, steps, queue))
    child.start()
    rate, peak_kb = queue.get(timeout=600)
    child.join()
    print(f"(d) training on the tiny model at 64 px, batch 1: {rate:.1f} steps/s; the trainer "
          f"process's peak RSS {peak_kb / 1024:.0f} MiB")


def build_full_size(out: Path) -> str:
    """A pipeline shaped and sized like SD 1.5 (random weights), in float16."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from agents.models.tiny import build_tokenizer

    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                        sample_size=512)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder,
                                   tokenizer=build_tokenizer(), unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(out)
    parameters = sum(p.numel() for p in unet.parameters())
    print(f"full-size base: UNet {parameters / 1e6:.0f}M parameters, saved in float16 at {out}")
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, default=6)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--resident", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--full-size", action="store_true")
    args = parser.parse_args()

    from agents.models.tiny import build_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = str(build_tiny_models(work / "tiny") / "diffusion")
        adapters = make_adapters(base, args.adapters, work)
        fulls = full_pipelines(base, adapters, work)
        switching_vs_full_load(base, adapters, fulls, rounds=8)
        cold_vs_warm(base, adapters, work / "adapter-cache")
        extra = make_adapters(base, max(0, args.models - len(adapters)), work,
                              first=len(adapters))
        mixed_workload(base, adapters + extra, args.models, args.requests, args.resident)
        training_rate(base, args.train_steps)
        if args.full_size:
            print("--- at Stable Diffusion 1.5's size ---")
            big = build_full_size(work / "sd15-size")
            big_adapters = make_adapters(big, 3, work / "big", steps=1)
            big_fulls = full_pipelines(big, big_adapters, work / "big")
            switching_vs_full_load(big, big_adapters, big_fulls, rounds=4, render=False)
            cold_vs_warm(big, big_adapters, work / "big-cache")


if __name__ == "__main__":
    main()
