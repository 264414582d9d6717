"""Stable Diffusion + ControlNet (and inpainting) through diffusers; prompts are encoded by
gpu_agent/prompts.py.

Pipelines load once and stay (LRU by model ids). `render` is blocking: the worker calls it in a
thread so the Kafka consumer keeps heartbeating during long jobs.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLInpaintPipeline,
)
from PIL import Image

from agents.models.device import pick_device, pick_dtype
from gpu_agent.adapters import ResidentAdapters
from gpu_agent.prompts import PromptEncoder
from schemas import RenderParams

ProgressCallback = Callable[[int, int], None]


class RenderEngine:
    def __init__(self, device: str = "auto", dtype: str = "auto", cache_size: int = 2,
                 family: str = "sd15", prompt_cache_size: int = 64,
                 resident_adapters: int = 8, hotswap_rank: int = 0):
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.cache_size = cache_size
        self.family = family
        self._pipelines: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._lock = threading.Lock()
        self._prompts = PromptEncoder(prompt_cache_size, sdxl=family == "sdxl")
        self.resident_adapters = resident_adapters
        self.hotswap_rank = hotswap_rank
        # The avatar base: (its model id, the pipeline, the person adapters loaded into it).
        self._text2img: tuple[str, object, ResidentAdapters] | None = None

    def pipeline(self, diffusion_id: str, controlnet_id: str):
        return self._cached(("controlnet", diffusion_id, controlnet_id),
                            lambda: self._load(diffusion_id, controlnet_id))

    def inpaint_pipeline(self, inpainting_id: str):
        return self._cached(("inpaint", inpainting_id), lambda: self._load_inpaint(inpainting_id))

    def text2img_pipeline(self, diffusion_id: str):
        """The base model for avatars: one per worker, outside the LRU of the other pipelines
        (an avatar request never evicts a warm ControlNet pipeline, nor they it), with weights
        of its own (adapters are loaded into its UNet and text encoder)."""
        return self._avatar_base(diffusion_id)[0]

    def adapters(self, diffusion_id: str) -> ResidentAdapters:
        return self._avatar_base(diffusion_id)[1]

    def _avatar_base(self, diffusion_id: str) -> tuple[object, ResidentAdapters]:
        with self._lock:
            if self._text2img is None or self._text2img[0] != diffusion_id:
                self._text2img = (diffusion_id, self._load_text2img(diffusion_id),
                                  ResidentAdapters(self.resident_adapters, self.hotswap_rank))
            return self._text2img[1], self._text2img[2]

    def _load_text2img(self, diffusion_id: str):
        pipe = StableDiffusionPipeline.from_pretrained(diffusion_id, torch_dtype=self.dtype,
                                                       safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def _cached(self, key: tuple, load):
        with self._lock:
            if key in self._pipelines:
                self._pipelines.move_to_end(key)
                return self._pipelines[key]
            pipe = load()
            self._pipelines[key] = pipe
            while len(self._pipelines) > self.cache_size:
                self._pipelines.popitem(last=False)
            return pipe

    def _load_inpaint(self, inpainting_id: str):
        if self.family == "sdxl":
            pipe = StableDiffusionXLInpaintPipeline.from_pretrained(inpainting_id,
                                                                    torch_dtype=self.dtype)
        else:
            pipe = StableDiffusionInpaintPipeline.from_pretrained(
                inpainting_id, torch_dtype=self.dtype, safety_checker=None,
                requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def _load(self, diffusion_id: str, controlnet_id: str):
        controlnet = ControlNetModel.from_pretrained(controlnet_id, torch_dtype=self.dtype)
        pipeline_class = (StableDiffusionXLControlNetPipeline if self.family == "sdxl"
                          else StableDiffusionControlNetPipeline)
        extra = {} if self.family == "sdxl" else {"safety_checker": None,
                                                   "requires_safety_checker": False}
        pipe = pipeline_class.from_pretrained(diffusion_id, controlnet=controlnet,
                                              torch_dtype=self.dtype, **extra)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def render(self, diffusion_id: str, controlnet_id: str, prompt: str, control: Image.Image,
               params: RenderParams, on_step: ProgressCallback | None = None) -> list[Image.Image]:
        pipe = self.pipeline(diffusion_id, controlnet_id)
        control = control.convert("RGB").resize((params.width, params.height),
                                                Image.Resampling.BICUBIC)
        embeddings = self._prompts.embed(diffusion_id, pipe, prompt, params.negative_prompt)
        # One generator per image (seed, seed+1, ...) so image n is reproducible on its own.
        generators = [torch.Generator(device="cpu").manual_seed(params.seed + n)
                      for n in range(params.num_images)]

        output = pipe(
            image=control, num_inference_steps=params.steps, guidance_scale=params.guidance,
            controlnet_conditioning_scale=params.controlnet_scale, width=params.width,
            height=params.height, num_images_per_prompt=params.num_images, generator=generators,
            callback_on_step_end=_progress(on_step, params.steps), **embeddings,
        )
        return list(output.images)

    def inpaint(self, inpainting_id: str, prompt: str, image: Image.Image, mask: Image.Image,
                params: RenderParams, on_step: ProgressCallback | None = None
                ) -> list[Image.Image]:
        """Repaint image where mask is white (outpainting a background: the mask is everything
        but the kept object), at params.width x params.height."""
        pipe = self.inpaint_pipeline(inpainting_id)
        size = (params.width, params.height)
        image = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        mask = mask.convert("L").resize(size, Image.Resampling.NEAREST)
        embeddings = self._prompts.embed(inpainting_id, pipe, prompt, params.negative_prompt)
        generators = [torch.Generator(device="cpu").manual_seed(params.seed + n)
                      for n in range(params.num_images)]
        output = pipe(
            image=image, mask_image=mask, strength=1.0, num_inference_steps=params.steps,
            guidance_scale=params.guidance, width=params.width, height=params.height,
            num_images_per_prompt=params.num_images, generator=generators,
            callback_on_step_end=_progress(on_step, params.steps), **embeddings,
        )
        return list(output.images)


    def avatar(self, diffusion_id: str, adapter_id: str | None, adapter_path: Path | None,
               prompt: str, params: RenderParams, lora_scale: float = 1.0,
               on_step: ProgressCallback | None = None) -> list[Image.Image]:
        """Text to image on the base model with one person's adapter active (adapter_id None:
        the base model alone). The adapter is loaded once and stays resident (LRU)."""
        pipe, adapters = self._avatar_base(diffusion_id)
        if adapter_id is None:
            adapters.deactivate(pipe)
            model_key = diffusion_id
        else:
            adapters.activate(pipe, adapter_id, adapter_path, lora_scale)
            # The text encoder may carry the adapter too: its encodings are the adapter's.
            model_key = f"{diffusion_id}#{adapter_id}@{lora_scale}"
        embeddings = self._prompts.embed(model_key, pipe, prompt, params.negative_prompt)
        generators = [torch.Generator(device="cpu").manual_seed(params.seed + n)
                      for n in range(params.num_images)]
        output = pipe(num_inference_steps=params.steps, guidance_scale=params.guidance,
                      width=params.width, height=params.height,
                      num_images_per_prompt=params.num_images, generator=generators,
                      callback_on_step_end=_progress(on_step, params.steps), **embeddings)
        return list(output.images)


def _progress(on_step: ProgressCallback | None, total: int):
    """diffusers' step-end callback, reporting step k of n."""
    def report(_pipe, step, _timestep, kwargs):
        if on_step:
            on_step(step + 1, total)
        return kwargs

    return report
