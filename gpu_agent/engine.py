"""Stable Diffusion + ControlNet (and inpainting) through diffusers; prompts are encoded by
gpu_agent/prompts.py.

Pipelines load once and stay (LRU by model ids). `render` is blocking: the worker calls it in a
thread so the Kafka consumer keeps heartbeating during long jobs.

One copy of the base model per worker (share_base): the ControlNet pipelines (depth, canny,
seg) and the avatar pipeline are views of one base pipeline (diffusers' `from_pipe`): they
share its UNet, VAE, text encoders and tokenizers, and each adds only its ControlNet (and its
own scheduler, whose timesteps are per call). The avatar adapters live in the shared UNet and
text encoder, so every other render switches them off first (ResidentAdapters.deactivate:
a LoRA layer with its adapters off computes exactly the base layer). Inpainting keeps its own
pipeline: its UNet is another checkpoint.
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
    StableDiffusionXLPipeline,
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
                 resident_adapters: int = 8, hotswap_rank: int = 0, share_base: bool = True):
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.cache_size = cache_size
        self.family = family
        self._pipelines: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._lock = threading.Lock()
        self._prompts = PromptEncoder(prompt_cache_size, sdxl=family == "sdxl")
        self.resident_adapters = resident_adapters
        self.hotswap_rank = hotswap_rank
        self.share_base = share_base
        # Base pipelines by model id (share_base), with the person adapters loaded into each.
        self._bases: dict[str, tuple[object, ResidentAdapters]] = {}
        self._avatar_id: str | None = None
        # The avatar base when it is not shared: (its model id, the pipeline, its adapters).
        self._text2img: tuple[str, object, ResidentAdapters] | None = None

    def pipeline(self, diffusion_id: str, controlnet_id: str):
        return self._cached(("controlnet", diffusion_id, controlnet_id),
                            lambda: self._load(diffusion_id, controlnet_id))

    def inpaint_pipeline(self, inpainting_id: str):
        return self._cached(("inpaint", inpainting_id), lambda: self._load_inpaint(inpainting_id))

    def text2img_pipeline(self, diffusion_id: str):
        """The base model for avatars: one per worker, outside the LRU of the other pipelines
        (an avatar request never evicts a warm ControlNet pipeline, nor they it). Adapters are
        loaded into its UNet and text encoder, which the ControlNet pipelines share when
        share_base is on (they switch the adapters off for their renders)."""
        return self._avatar_base(diffusion_id)[0]

    def adapters(self, diffusion_id: str) -> ResidentAdapters:
        return self._avatar_base(diffusion_id)[1]

    def _avatar_base(self, diffusion_id: str) -> tuple[object, ResidentAdapters]:
        with self._lock:
            if self.share_base:
                self._avatar_id = diffusion_id
                return self._base(diffusion_id)
            if self._text2img is None or self._text2img[0] != diffusion_id:
                self._text2img = (diffusion_id, self._load_text2img(diffusion_id),
                                  ResidentAdapters(self.resident_adapters, self.hotswap_rank))
            return self._text2img[1], self._text2img[2]

    def _base(self, diffusion_id: str) -> tuple[object, ResidentAdapters]:
        """The shared base pipeline of diffusion_id and its adapters (call under the lock)."""
        if diffusion_id not in self._bases:
            self._bases[diffusion_id] = (self._load_text2img(diffusion_id), ResidentAdapters(
                self.resident_adapters, self.hotswap_rank))
        return self._bases[diffusion_id]

    def _drop_unused_bases(self) -> None:
        """A base no cached pipeline uses any more goes (call under the lock), but for the
        one avatars are served on."""
        used = {key[1] for key in self._pipelines if key[0] == "controlnet"}
        for diffusion_id in list(self._bases):
            if diffusion_id not in used and diffusion_id != self._avatar_id:
                del self._bases[diffusion_id]

    def loaded_pipelines(self) -> list:
        """Every pipeline this engine holds (the ControlNet and inpainting LRU, the bases)."""
        with self._lock:
            held = list(self._pipelines.values()) + [pipe for pipe, _ in self._bases.values()]
            if self._text2img is not None:
                held.append(self._text2img[1])
            return held

    def resident_bytes(self) -> int:
        """Bytes of the weights (parameters and buffers) of every pipeline held, each tensor
        counted once however many pipelines share it."""
        sizes: dict[int, int] = {}
        for pipe in self.loaded_pipelines():
            for component in pipe.components.values():
                if isinstance(component, torch.nn.Module):
                    for tensor in (*component.parameters(), *component.buffers()):
                        sizes[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
        return sum(sizes.values())

    def _base_only(self, diffusion_id: str) -> None:
        """Switch the person adapters off in the shared base, for a render that is not an
        avatar's (a no-op when they are off already)."""
        if self.share_base and diffusion_id in self._bases:
            pipe, adapters = self._bases[diffusion_id]
            adapters.deactivate(pipe)

    def _load_text2img(self, diffusion_id: str):
        pipeline_class = (StableDiffusionXLPipeline if self.family == "sdxl"
                          else StableDiffusionPipeline)
        extra = {} if self.family == "sdxl" else {"safety_checker": None,
                                                   "requires_safety_checker": False}
        pipe = pipeline_class.from_pretrained(diffusion_id, torch_dtype=self.dtype, **extra)
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
            self._drop_unused_bases()
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
        if self.share_base:
            base, _ = self._base(diffusion_id)
            scheduler = type(base.scheduler).from_config(base.scheduler.config)
            pipe = pipeline_class.from_pipe(base, controlnet=controlnet.to(self.device),
                                            scheduler=scheduler)
            pipe.set_progress_bar_config(disable=True)
            return pipe
        extra = {} if self.family == "sdxl" else {"safety_checker": None,
                                                   "requires_safety_checker": False}
        pipe = pipeline_class.from_pretrained(diffusion_id, controlnet=controlnet,
                                              torch_dtype=self.dtype, **extra)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def render(self, diffusion_id: str, controlnet_id: str, prompt: str, control: Image.Image,
               params: RenderParams, on_step: ProgressCallback | None = None) -> list[Image.Image]:
        pipe = self.pipeline(diffusion_id, controlnet_id)
        self._base_only(diffusion_id)
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
