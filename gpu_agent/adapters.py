"""Many people's LoRA adapters on one base pipeline: the files kept on local disk (an LRU sized
in MB), and the adapters kept loaded on the device (an LRU sized in adapters), one of them
active per render. Switching never rebuilds the pipeline: diffusers' adapter API loads each
adapter once under its own name and `set_adapters` picks the one a request wants."""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Awaitable, Callable

ADAPTER_FILE = "pytorch_lora_weights.safetensors"


def adapter_name(adapter_id: str) -> str:
    """A name diffusers and peft accept for any registry key (no dots or slashes)."""
    return "a" + hashlib.sha256(adapter_id.encode()).hexdigest()[:20]


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


class ResidentAdapters:
    """Which adapters are loaded into one pipeline, least recently used first. Not thread-
    safe on its own: the GPU worker renders one request at a time."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._loaded: OrderedDict[str, str] = OrderedDict()  # adapter id -> adapter name
        # What diffusers was last told: LoRA layers on or off, and which adapter at which
        # scale. Each of its calls walks every module, so only what changed is called.
        self._enabled = True
        self._active: tuple[str, float] | None = None
        self.loads = 0
        self.hits = 0

    def __contains__(self, adapter_id: str) -> bool:
        return adapter_id in self._loaded

    def activate(self, pipe, adapter_id: str, path: Path, scale: float) -> str:
        """Make adapter_id the only active adapter of pipe, at scale; load it first (evicting
        the least recently used beyond capacity) if it is not loaded."""
        name = self._loaded.get(adapter_id)
        if name is None:
            while len(self._loaded) >= self.capacity:
                _, evicted = self._loaded.popitem(last=False)
                pipe.delete_adapters(evicted)
                self._active = None
            name = adapter_name(adapter_id)
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
            self._loaded[adapter_id] = name
            self.loads += 1
            self._active = None  # loading changes which adapter is active
        else:
            self._loaded.move_to_end(adapter_id)
            self.hits += 1
        if not self._enabled:
            pipe.enable_lora()
            self._enabled = True
        if self._active != (name, scale):
            pipe.set_adapters([name], adapter_weights=[scale])
            self._active = (name, scale)
        return name

    def deactivate(self, pipe) -> None:
        """The base model alone (adapters stay loaded)."""
        if self._enabled:
            pipe.disable_lora()
            self._enabled = False
