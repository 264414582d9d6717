"""The one way CPU-stage models enter: `from_pretrained` on a model id or a local directory."""
from __future__ import annotations


class PretrainedRole:
    """A transformers model plus its processor, on one device. Subclasses name the Auto classes."""

    auto_model: str
    auto_processor: str
    processor_options: dict = {}

    def __init__(self, model, processor, device: str):
        self.model = model
        self.processor = processor
        self.device = device

    @classmethod
    def from_pretrained(cls, model_id: str, device: str = "cpu"):
        import transformers

        processor = getattr(transformers, cls.auto_processor).from_pretrained(
            model_id, **cls.processor_options)
        model = getattr(transformers, cls.auto_model).from_pretrained(model_id)
        return cls(model.to(device).eval(), processor, device)
