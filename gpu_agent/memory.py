"""GPU memory per CUDA device, for /metrics (restyle_gpu_memory_bytes): what PyTorch has
allocated to tensors and what its caching allocator reserves (the figure nvidia-smi shows,
minus the CUDA context)."""
from __future__ import annotations

import torch

from streams.core.metrics import GPU_MEMORY_BYTES


def report_gpu_memory() -> int:
    """Set the gauges for every visible CUDA device; returns how many were reported (0 without
    CUDA)."""
    if not torch.cuda.is_available():
        return 0
    count = torch.cuda.device_count()
    for n in range(count):
        GPU_MEMORY_BYTES.labels(f"cuda:{n}", "allocated").set(torch.cuda.memory_allocated(n))
        GPU_MEMORY_BYTES.labels(f"cuda:{n}", "reserved").set(torch.cuda.memory_reserved(n))
    return count
