"""Weighted prompts to text embeddings, with compel, kept per model (LRU)."""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import pyparsing
import torch
from compel import Compel, ReturnedEmbeddingsType


class PromptEncoder:
    """Weighted prompts (`(green velvet sofa)0.8`, `++`, `.and()`) to embeddings with compel.

    Each text's conditioning is kept (LRU, per text-encoder model): the negative prompt is
    nearly always the configured default and a batch shares one prompt, so most texts are
    encoded once.
    compel parses with pyparsing, pure Python that costs more than a small model's denoising
    and holds the GIL against the worker's event loop; packrat memoising halves it."""

    def __init__(self, cache_size: int = 64, sdxl: bool = False):
        self.cache_size = cache_size
        self.sdxl = sdxl  # SDXL: two text encoders, pooled embeddings
        self._compels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per pipeline
        self._conditionings: OrderedDict[tuple[str, str], tuple] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, model_id: str, pipe, prompt: str, negative: str) -> dict:
        """model_id names the weights pipe's text encoders come from: texts encoded by one
        pipeline of that model are reused by every other (a depth and a canny pipeline share
        them)."""
        compel = self._compel(pipe)
        positive, pooled = self._conditioning(model_id, compel, prompt)
        negative_embeds, negative_pooled = self._conditioning(model_id, compel, negative)
        # A long prompt (or a conjunction) is longer than 77 tokens: both sides must match.
        with torch.no_grad():  # padding may encode an empty prompt
            positive, negative_embeds = compel.pad_conditioning_tensors_to_same_length(
                [positive, negative_embeds])
        embeddings = {"prompt_embeds": positive, "negative_prompt_embeds": negative_embeds}
        if self.sdxl:
            embeddings.update(pooled_prompt_embeds=pooled,
                              negative_pooled_prompt_embeds=negative_pooled)
        return embeddings

    def _conditioning(self, model_id: str, compel, text: str) -> tuple:
        key = (model_id, text)
        with self._lock:
            if key in self._conditionings:
                self._conditionings.move_to_end(key)
                return self._conditionings[key]
        with torch.no_grad():
            encoded = compel(text)
        conditioning = encoded if isinstance(encoded, tuple) else (encoded, None)
        with self._lock:
            self._conditionings[key] = conditioning
            while len(self._conditionings) > self.cache_size:
                self._conditionings.popitem(last=False)
        return conditioning

    def _compel(self, pipe):
        if pipe in self._compels:
            return self._compels[pipe]
        pyparsing.ParserElement.enable_packrat()  # compel's grammar backtracks a lot
        if self.sdxl:
            compel = Compel(
                tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
                text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
                returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                requires_pooled=[False, True], truncate_long_prompts=False,
            )
        else:
            compel = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                            truncate_long_prompts=False)
        self._compels[pipe] = compel
        return compel
