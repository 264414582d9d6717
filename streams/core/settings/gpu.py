"""The GPU worker: pipelines and prompts kept, requests held, pipelines warmed."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from streams.core.settings.base import SettingsBase


class GpuSettings(SettingsBase):
    # Diffusion pipelines kept loaded (LRU); never fewer than the warmed tasks.
    pipeline_cache_size: int = 3
    # One copy of the base model per worker: the ControlNet pipelines and the avatar pipeline
    # share its UNet, VAE and text encoders (gpu_agent/engine.py). Off: each loads its own.
    share_base_model: bool = True
    # Encoded prompts a GPU worker keeps (LRU): the default negative prompt and a batch's shared
    # prompt are then encoded once instead of on every image.
    prompt_cache_size: int = Field(64, ge=0)
    # Render requests a GPU worker holds at once: while the model runs one, the others fetch
    # their inputs or store their outputs, so the model never waits on I/O.
    gpu_prefetch: int = 3
    # Priority lanes: batch images go to their own render topic, and a GPU worker gives the
    # model to an interactive request (a makeover, an avatar, a single image) before any batch
    # one; a batch request waits behind at most interactive_burst interactive renders in a
    # row. Off: one topic, first come first served.
    render_lanes: bool = True
    interactive_burst: int = Field(4, ge=1)
    # Batched renders: requests that wait for the model at the same moment and can share a
    # pipeline call (same model and adapter, task, size, steps, guidance, ControlNet scale)
    # are rendered in one call, up to this many (1: one request per call). Unset: 4 on a GPU,
    # which draws a batch in little more than the time of one image; 1 on a CPU, where a call
    # of 4 takes nearly 4 renders' time and an interactive request waiting behind a batch
    # call would wait that long.
    render_max_batch: int | None = Field(None, ge=1)
    # How long a request that got the model's turn waits for company before it renders
    # anyway (0: never waits; batches then form only from requests already queued).
    render_max_wait_ms: float = Field(0.0, ge=0)
    # torch.compile the UNets (and warm each warmed pipeline up with one render at the
    # default size, which compiles it): faster denoising on a GPU after a slow first render;
    # a new image size compiles again. Off by default; worth it on long-running GPU workers.
    compile_unet: bool = False
    # A render's progress is told at most this often (0: every denoising step); the first
    # step is timed from its `generating` status, a step with a preview is always told, and a
    # step slower than this is told every time (gpu_agent/progress.py). Each told step is a job
    # event through the broker and the tracker: at 20-30 steps a second on a GPU, telling
    # each one costs more than a progress bar shows. Keep it far below the job timeouts: the
    # sweeper gives up a job whose render tells nothing for that long.
    progress_interval_s: float = Field(0.25, ge=0)
    # Live previews: every this many denoising steps a render sends a small JPEG of the image
    # so far with its progress (0: none), its longer side preview_size pixels; decoded by a
    # linear projection of the latents, or by the tiny VAE preview_decoder names (an
    # AutoencoderTiny id or directory, e.g. madebyollin/taesd) when set.
    preview_every_steps: int = Field(5, ge=0)
    preview_size: int = Field(96, ge=16, le=512)
    preview_decoder: str = ""
    # Pipelines the GPU worker loads at start (so the first job of each kind is not slow);
    # "avatar": the base model that person adapters are served on (kept apart from the LRU).
    gpu_warm_tasks: list[Literal["controlnet_depth", "controlnet_canny", "controlnet_seg",
                                 "inpaint", "avatar"]] = Field(
        default_factory=lambda: ["controlnet_depth", "controlnet_canny", "inpaint"])
