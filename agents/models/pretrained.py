"""The one way CPU-stage models enter: `from_pretrained` on a model id or a local directory."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("restyle")


class PretrainedRole:
    """A transformers model plus its processor, on one device and in one precision.
    Subclasses name the Auto classes."""

    auto_model: str
    auto_processor: str
    processor_options: dict = {}

    def __init__(self, model, processor, device: str, dtype: torch.dtype = torch.float32):
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype

    @classmethod
    def from_pretrained(cls, model_id: str, device: str = "cpu",
                        dtype: torch.dtype = torch.float32, attention: str = "sdpa"):
        import transformers

        processor = getattr(transformers, cls.auto_processor).from_pretrained(
            model_id, **cls.processor_options)
        auto = getattr(transformers, cls.auto_model)
        try:
            model = auto.from_pretrained(model_id, dtype=dtype, attn_implementation=attention)
        except ValueError as refused:  # this architecture has no such attention kernel
            log.info("%s: %s; loading it with its own attention", model_id, refused)
            model = auto.from_pretrained(model_id, dtype=dtype)
        return cls(model.to(device).eval(), processor, device, dtype)

    def placed(self, features):
        """A processor's output on the model's device, its floating tensors (pixels) in the
        model's precision (token ids stay integers)."""
        features = features.to(self.device)
        for name, value in features.items():
            if torch.is_tensor(value) and value.is_floating_point():
                features[name] = value.to(self.dtype)
        return features
