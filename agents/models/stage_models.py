"""The CPU stages' models, each loaded once per process on first use (from a model id or dir)."""
from __future__ import annotations

import threading
from typing import Callable

from agents.models.caption import Captioner
from agents.models.depth import DepthEstimator
from agents.models.detect import Detector
from agents.models.device import pick_device, pick_dtype
from agents.models.embed import ImageEmbedder
from agents.models.faces import FaceDetector
from agents.models.pretrained import PretrainedRole
from agents.models.segment import BoxSegmenter, SalientSegmenter
from agents.models.semantic import SemanticSegmenter


# The roles no stage needs on every worker, loaded when first used (or at start where
# RESTYLE_CPU_WARM_MODELS names them).
ON_FIRST_USE = {"captioner": Captioner, "semantic": SemanticSegmenter,
                "face_detector": FaceDetector}


class StageModels:
    def __init__(self, settings, after_load: Callable[[str], None] | None = None):
        self.settings = settings
        # Called (with the role) once a model is loaded: a worker settles its heap
        # (streams/core/heap.py); these models are never unloaded.
        self._after_load = after_load
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()

    def _get(self, role: str, loader):
        with self._lock:
            if role not in self._loaded:
                settings = self.settings
                device = pick_device(settings.device_for(role))
                options = {}
                if issubclass(loader, PretrainedRole):  # transformers models
                    options = {"dtype": pick_dtype(settings.stage_dtype, device),
                               "attention": settings.attention}
                self._loaded[role] = loader.from_pretrained(settings.model_id(role),
                                                            device=device, **options)
                if self._after_load:
                    self._after_load(f"the {role} model")
            return self._loaded[role]

    @property
    def detector(self) -> Detector:
        return self._get("detector", Detector)

    @property
    def embedder(self) -> ImageEmbedder:
        return self._get("embedder", ImageEmbedder)

    @property
    def depth(self) -> DepthEstimator:
        return self._get("depth", DepthEstimator)

    @property
    def captioner(self) -> Captioner:
        return self._get("captioner", ON_FIRST_USE["captioner"])

    @property
    def segmenter(self) -> BoxSegmenter:
        return self._get("segmenter", BoxSegmenter)

    @property
    def salient(self) -> SalientSegmenter:
        return self._get("salient", SalientSegmenter)

    @property
    def semantic(self) -> SemanticSegmenter:
        return self._get("semantic", ON_FIRST_USE["semantic"])

    @property
    def faces(self) -> FaceDetector:
        return self._get("face_detector", ON_FIRST_USE["face_detector"])

    def warm_up(self) -> None:
        # Settled once for them all (a full collection each would cost a second apiece)
        after_load, self._after_load = self._after_load, None
        try:
            _ = self.detector, self.embedder, self.depth
            if self.settings.mask_refiner == "sam":
                _ = self.segmenter
            if self.settings.mask_refiner == "u2netp" or self.settings.salient_fallback:
                _ = self.salient
            for role in self.settings.cpu_warm_models:  # otherwise loaded on first use
                self._get(role, ON_FIRST_USE[role])
        finally:
            self._after_load = after_load
        if after_load:
            after_load(f"the {', '.join(self._loaded)} models")
