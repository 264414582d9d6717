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
from dataclasses import dataclass
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
from gpu_agent.previews import Previews
from gpu_agent.prompts import PromptEncoder
from schemas import RenderParams
from streams.adapters.images import fit_control

# (step, of steps, the step's latents for this request's first image: a function, so that
# nothing is copied unless a preview is due).
ProgressCallback = Callable[[int, int, Callable[[], torch.Tensor]], None]


class RenderEngine:
    def __init__(self, device: str = "auto", dtype: str = "auto", cache_size: int = 2,
                 family: str = "sd15", prompt_cache_size: int = 64,
                 resident_adapters: int = 8, hotswap_rank: int = 0, share_base: bool = True,
                 compile_unet: bool = False, previews: Previews | None = None):
        """compile_unet: torch.compile each UNet as it loads (the first render of each size
        compiles it: warm it up at start; see RESTYLE_COMPILE_UNET). previews: what turns a
        step's latents into a preview (gpu_agent/previews.py), None for none."""
        self.previews = previews
        self.device = pick_device(device)
        self.compile_unet = compile_unet
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
        return self._compiled(pipe.to(self.device))

    def _compiled(self, pipe):
        """pipe, its UNet compiled in place when compile_unet is set (views of a shared base
        share the compiled UNet)."""
        if self.compile_unet:
            pipe.unet.compile()
        return pipe

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
        return self._compiled(pipe.to(self.device))

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
        return self._compiled(pipe.to(self.device))

    def warm_up(self, diffusion_id: str, controlnet_id: str, defaults) -> None:
        """One render at the default size and steps (compiles a compiled UNet for it)."""
        params = RenderParams(**{**defaults.model_dump(), "num_images": 1}, seed=0)
        control = Image.new("RGB", (params.width, params.height))
        self.render_shots(diffusion_id, controlnet_id, [Shot("a room", params, control=control)])

    # --- one request ---
    def render(self, diffusion_id: str, controlnet_id: str, prompt: str, control: Image.Image,
               params: RenderParams, on_step: ProgressCallback | None = None) -> list[Image.Image]:
        return self.render_shots(diffusion_id, controlnet_id,
                                 [Shot(prompt, params, control=control, on_step=on_step)])[0]

    def inpaint(self, inpainting_id: str, prompt: str, image: Image.Image, mask: Image.Image,
                params: RenderParams, on_step: ProgressCallback | None = None
                ) -> list[Image.Image]:
        """Repaint image where mask is white (outpainting a background: the mask is everything
        but the kept object), at params.width x params.height."""
        return self.inpaint_shots(inpainting_id, [Shot(prompt, params, image=image, mask=mask,
                                                       on_step=on_step)])[0]

    def avatar(self, diffusion_id: str, adapter_id: str | None, adapter_path: Path | None,
               prompt: str, params: RenderParams, lora_scale: float = 1.0,
               on_step: ProgressCallback | None = None) -> list[Image.Image]:
        """Text to image on the base model with one person's adapter active (adapter_id None:
        the base model alone). The adapter is loaded once and stays resident (LRU)."""
        return self.avatar_shots(diffusion_id, adapter_id, adapter_path, lora_scale,
                                 [Shot(prompt, params, on_step=on_step)])[0]

    # --- several requests in one pipeline call (batched renders) ---
    def render_shots(self, diffusion_id: str, controlnet_id: str,
                     shots: list[Shot]) -> list[list[Image.Image]]:
        """Each shot's images, rendered together (shots share shared_params)."""
        pipe = self.pipeline(diffusion_id, controlnet_id)
        self._base_only(diffusion_id)
        size = (shots[0].params.width, shots[0].params.height)
        return self._call(pipe, diffusion_id, shots, lambda shot: {
            "image": fit_control(shot.control, size).convert("RGB")},
            controlnet_conditioning_scale=shots[0].params.controlnet_scale)

    def inpaint_shots(self, inpainting_id: str, shots: list[Shot]) -> list[list[Image.Image]]:
        pipe = self.inpaint_pipeline(inpainting_id)
        size = (shots[0].params.width, shots[0].params.height)
        return self._call(pipe, inpainting_id, shots, lambda shot: {
            "image": shot.image.convert("RGB").resize(size, Image.Resampling.LANCZOS),
            "mask_image": shot.mask.convert("L").resize(size, Image.Resampling.NEAREST)},
            strength=1.0)

    def avatar_shots(self, diffusion_id: str, adapter_id: str | None,
                     adapter_path: Path | None, lora_scale: float,
                     shots: list[Shot]) -> list[list[Image.Image]]:
        pipe, adapters = self._avatar_base(diffusion_id)
        if adapter_id is None:
            adapters.deactivate(pipe)
            model_key = diffusion_id
        else:
            adapters.activate(pipe, adapter_id, adapter_path, lora_scale)
            # The text encoder may carry the adapter too: its encodings are the adapter's.
            model_key = f"{diffusion_id}#{adapter_id}@{lora_scale}"
        return self._call(pipe, model_key, shots, lambda shot: {})

    def _call(self, pipe, model_key: str, shots: list[Shot],
              inputs: Callable[[Shot], dict], **shared) -> list[list[Image.Image]]:
        """One pipeline call per prompt length (texts over 77 tokens encode longer; padding a
        shorter one to match would change its image), each image of each shot a row of the
        batch: its own prompt, negative prompt, inputs and generator (seed + n, so image n of
        a request is the same whether it was rendered alone or in company)."""
        params = shots[0].params
        if any(shared_params(s.params) != shared_params(params) for s in shots):
            raise ValueError("shots rendered together must share size, steps, guidance and "
                             "ControlNet scale")
        embeddings = [self._prompts.embed(model_key, pipe, s.prompt, s.params.negative_prompt)
                      for s in shots]
        by_length: dict[int, list[int]] = {}
        for n, embedding in enumerate(embeddings):
            by_length.setdefault(embedding["prompt_embeds"].shape[1], []).append(n)
        images: list[list[Image.Image]] = [[] for _ in shots]
        for members in by_length.values():
            rows = [(n, k) for n in members for k in range(shots[n].params.num_images)]
            batch = {name: torch.cat([embeddings[n][name] for n, _ in rows])
                     for name in embeddings[members[0]]}
            per_shot = {n: inputs(shots[n]) for n in members}
            for name in per_shot[members[0]]:
                batch[name] = [per_shot[n][name] for n, _ in rows]
            generators = [torch.Generator(device="cpu").manual_seed(shots[n].params.seed + k)
                          for n, k in rows]
            output = pipe(
                num_inference_steps=params.steps, guidance_scale=params.guidance,
                width=params.width, height=params.height, num_images_per_prompt=1,
                generator=generators, callback_on_step_end=_progress(
                    [(shots[n].on_step, rows.index((n, 0))) for n in members], params.steps),
                **batch, **shared)
            for (n, _), image in zip(rows, output.images):
                images[n].append(image)
        return images


@dataclass
class Shot:
    """One request's part of a pipeline call: its prompt and parameters (its own seed, image
    count and negative prompt; size, steps, guidance and ControlNet scale are the call's:
    shared_params) and its input images (a control image; an image and mask to repaint)."""
    prompt: str
    params: RenderParams
    control: Image.Image | None = None
    image: Image.Image | None = None
    mask: Image.Image | None = None
    on_step: ProgressCallback | None = None


def shared_params(params: RenderParams) -> tuple:
    """What requests rendered in one call must have in common."""
    return (params.width, params.height, params.steps, params.guidance,
            params.controlnet_scale)


def _progress(callbacks: list[tuple[ProgressCallback | None, int]], total: int):
    """diffusers' step-end callback, reporting step k of n to every request in the call, each
    with its first image's row of the latents."""
    def report(_pipe, step, _timestep, kwargs):
        latents = kwargs.get("latents")
        for on_step, row in callbacks:
            if on_step:
                on_step(step + 1, total, lambda row=row: latents[row])
        return kwargs

    return report
