"""Product captions from a local image-to-text model (BLIP by default; chat VLMs too).

A BLIP-style captioner continues the configured prompt ("a photo of ..."), and the prompt is
removed from the caption. A processor with a chat template (Florence, Qwen-VL, SmolVLM ...) gets the
prompt as the user turn, and only the newly generated tokens are kept.
"""
from __future__ import annotations

import torch
from PIL import Image

from agents.models.pretrained import PretrainedRole


class Captioner(PretrainedRole):
    auto_model = "AutoModelForImageTextToText"
    auto_processor = "AutoProcessor"

    @torch.inference_mode()
    def caption(self, images: list[Image.Image], prompt: str, max_tokens: int) -> list[str]:
        if not images:
            return []
        if getattr(self.processor, "chat_template", None):
            return self._chat_captions(images, prompt, max_tokens)
        texts = [prompt] * len(images) if prompt else None
        inputs = self.placed(self.processor(images=images, text=texts, return_tensors="pt"))
        outputs = self.model.generate(**inputs, max_new_tokens=max_tokens)
        decoded = self.processor.batch_decode(outputs, skip_special_tokens=True)
        return [_without_prefix(text.strip(), prompt) for text in decoded]

    def _chat_captions(self, images, prompt: str, max_tokens: int) -> list[str]:
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.placed(self.processor(images=[[image] for image in images],
                                            text=[text] * len(images), return_tensors="pt",
                                            padding=True))
        outputs = self.model.generate(**inputs, max_new_tokens=max_tokens)
        new_tokens = outputs[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new_tokens,
                                                               skip_special_tokens=True)]


def _without_prefix(text: str, prompt: str) -> str:
    if prompt and text.lower().startswith(prompt.lower()):
        text = text[len(prompt):].strip()
    return text
