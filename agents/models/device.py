"""Device and dtype choice: cuda when present, else cpu; half precision only where it pays."""
from __future__ import annotations

import torch


def pick_device(setting: str = "auto") -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(setting: str, device: str) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    # float16 on CPU is slow or unsupported for many ops; keep float32 there.
    return torch.float16 if device in ("cuda", "mps") else torch.float32
