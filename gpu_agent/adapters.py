"""Many people's LoRA adapters on one base pipeline: the files kept on local disk (an LRU sized
in MB), and the adapters kept loaded on the device (an LRU sized in adapters), one of them
active per render. Switching never rebuilds the pipeline: diffusers' adapter API loads each
adapter once under its own name and `set_adapters` picks the one a request wants."""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

ADAPTER_FILE = "pytorch_lora_weights.safetensors"


class AdapterFiles:
    """Adapter files on local disk, fetched from storage once, evicted oldest-used first when
    the cache is over its size."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.fetches = 0

    def path_for(self, uri: str) -> Path:
        return self.directory / hashlib.sha256(uri.encode()).hexdigest()[:32] / ADAPTER_FILE

    async def local(self, uri: str, fetch: Callable[[str], Awaitable[bytes]]) -> Path:
        """The adapter at uri as a local file (fetched on a miss)."""
        path = self.path_for(uri)
        if path.exists():
            os.utime(path)  # most recently used
            return path
        data = await fetch(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(path)  # a reader never sees half a file
        self.fetches += 1
        self._evict(keep=path)
        return path

    def _evict(self, keep: Path) -> None:
        with self._lock:
            files = sorted(self.directory.glob(f"*/{ADAPTER_FILE}"),
                           key=lambda p: p.stat().st_mtime)
            total = sum(p.stat().st_size for p in files)
            for old in files:
                if total <= self.max_bytes:
                    break
                if old == keep:
                    continue
                total -= old.stat().st_size
                old.unlink(missing_ok=True)


@dataclass
class Slot:
    name: str  # the adapter name diffusers knows it by
    text_encoder: bool  # whether it also adapts the text encoder (hotswap cannot replace that)


def adapter_shape(path: Path) -> tuple[bool, int]:
    """(has text-encoder weights, its largest LoRA rank), from the file's tensor headers."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as tensors:
        keys = list(tensors.keys())
        ranks = [tensors.get_slice(k).get_shape()[0] for k in keys
                 if "lora_A" in k or "lora.down" in k]
    return any(k.startswith("text_encoder.") for k in keys), max(ranks, default=0)


class ResidentAdapters:
    """Which adapters are loaded into one pipeline, least recently used first. Not thread-
    safe on its own: the GPU worker renders one request at a time.

    hotswap_rank > 0: an adapter that replaces an evicted one is written into the evicted
    one's LoRA layers in place (diffusers' hotswap: no layers added or removed, so a compiled
    UNet is not recompiled), for UNet-only adapters of at most that rank; others are loaded
    the usual way."""

    def __init__(self, capacity: int, hotswap_rank: int = 0):
        self.capacity = capacity
        self.hotswap_rank = hotswap_rank
        self._slots: OrderedDict[str, Slot] = OrderedDict()  # adapter id -> its slot
        # What diffusers was last told: LoRA layers on or off, and which adapter at which
        # scale. Each of its calls walks every module, so only what changed is called.
        self._enabled = True
        self._active: tuple[str, float] | None = None
        self._names = 0
        self._hotswap_ready = False
        self.loads = 0
        self.hits = 0
        self.hotswaps = 0

    def __contains__(self, adapter_id: str) -> bool:
        return adapter_id in self._slots

    def activate(self, pipe, adapter_id: str, path: Path, scale: float) -> str:
        """Make adapter_id the only active adapter of pipe, at scale; load it first (evicting
        the least recently used beyond capacity) if it is not loaded."""
        slot = self._slots.get(adapter_id)
        if slot is None:
            slot = self._load(pipe, path)
            self._slots[adapter_id] = slot
            self.loads += 1
            self._active = None  # loading changes which adapter is active
        else:
            self._slots.move_to_end(adapter_id)
            self.hits += 1
        if not self._enabled:
            pipe.enable_lora()
            self._enabled = True
        if self._active != (slot.name, scale):
            pipe.set_adapters([slot.name], adapter_weights=[scale])
            self._active = (slot.name, scale)
        return slot.name

    def _load(self, pipe, path: Path) -> Slot:
        text_encoder, rank = adapter_shape(path)
        if self.hotswap_rank and not self._hotswap_ready:
            pipe.enable_lora_hotswap(target_rank=self.hotswap_rank)  # before the first load
            self._hotswap_ready = True
        evicted = None
        if len(self._slots) >= self.capacity:
            _, evicted = self._slots.popitem(last=False)
        swappable = (evicted is not None and self.hotswap_rank and not text_encoder
                     and not evicted.text_encoder and rank <= self.hotswap_rank)
        if swappable:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name,
                                   adapter_name=evicted.name, hotswap=True)
            self.hotswaps += 1
            return Slot(evicted.name, False)
        if evicted is not None:
            pipe.delete_adapters(evicted.name)
        self._names += 1
        name = f"person{self._names}"
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
        return Slot(name, text_encoder)

    def deactivate(self, pipe) -> None:
        """The base model alone (adapters stay loaded)."""
        if self._enabled:
            pipe.disable_lora()
            self._enabled = False
