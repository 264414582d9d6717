"""`restyle models download`: which files of a model repository are fetched, which model each
role wants, and what it says offline (this machine cannot reach the Hub, as many cannot)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streams.cli.weights import files_to_fetch, wanted
from streams.core.settings import Settings

# The file listings of real repositories (abridged where nothing new would be shown).
SD15 = ["model_index.json", "v1-5-pruned.ckpt", "v1-5-pruned.safetensors",
        "v1-5-pruned-emaonly.safetensors", "README.md", ".gitattributes",
        "feature_extractor/preprocessor_config.json",
        "safety_checker/config.json", "safety_checker/model.safetensors",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.bin",
        "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.bin",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors"]
CONTROLNET = ["config.json", "diffusion_pytorch_model.bin",
              "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
              "images/image_out.png", "README.md"]
TRANSFORMERS = ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5",
                "flax_model.msgpack", "onnx/model.onnx", "preprocessor_config.json",
                "tokenizer.json", "spiece.model", "README.md"]


def test_a_pipeline_is_fetched_from_its_component_folders_without_checkpoints_or_variants():
    assert files_to_fetch(SD15) == [
        "feature_extractor/preprocessor_config.json", "model_index.json",
        "scheduler/scheduler_config.json", "text_encoder/config.json",
        "text_encoder/model.safetensors", "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]


def test_a_model_is_fetched_as_safetensors_with_its_configs_only():
    assert files_to_fetch(CONTROLNET) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert files_to_fetch(TRANSFORMERS) == ["config.json", "model.safetensors",
                                            "preprocessor_config.json", "spiece.model",
                                            "tokenizer.json"]


def test_pickled_weights_are_fetched_where_a_repository_has_nothing_else():
    assert files_to_fetch(["config.json", "pytorch_model.bin", "tf_model.h5"]) == \
        ["config.json", "pytorch_model.bin"]


def test_sharded_weights_are_fetched_with_their_index():
    shards = ["config.json", "model.safetensors.index.json",
              "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
              "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    assert files_to_fetch(shards) == ["config.json", "model-00001-of-00002.safetensors",
                                      "model-00002-of-00002.safetensors",
                                      "model.safetensors.index.json"]


def test_each_role_wants_its_familys_public_model_or_the_one_set_for_it():
    sd15 = {item.role: item.model_id for item in wanted(Settings(_env_file=None))}
    assert sd15["diffusion"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert sd15["salient"] == "bundled"
    sdxl = {item.role: item for item in wanted(Settings(
        _env_file=None, diffusion_family="sdxl", captioner_model="me/my-captioner"))}
    assert sdxl["diffusion"].model_id == "stabilityai/stable-diffusion-xl-base-1.0"
    assert sdxl["captioner"].model_id == "me/my-captioner"
    assert sdxl["controlnet_seg"].model_id == "" and \
        "RESTYLE_CONTROLNET_SEG_MODEL" in sdxl["controlnet_seg"].why_none
    with pytest.raises(ValueError, match="no model role 'unet'"):
        wanted(Settings(_env_file=None), ["unet"])


def download(tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "RESTYLE_STATE_DIR": str(tmp_path / "state")}
    env.pop("RESTYLE_MODELS_DIR", None)
    return subprocess.run([sys.executable, "-m", "streams.cli.main", "models", "download", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def test_offline_it_lists_what_is_missing_and_exits_1(tmp_path):
    done = download(tmp_path, "--role", "diffusion", "--role", "embedder", "--role", "salient")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 model(s) offline (HF_HUB_OFFLINE=1):" in done.stderr
    assert "diffusion: stable-diffusion-v1-5/stable-diffusion-v1-5" in done.stderr
    assert "embedder: openai/clip-vit-base-patch32" in done.stderr
    assert "salient: bundled (local, nothing to fetch)" in done.stdout
    assert "Traceback" not in done.stderr


def test_into_a_directory_the_bundled_weights_are_linked_even_offline(tmp_path):
    done = download(tmp_path, "--dir", str(tmp_path / "models"), "--role", "salient",
                    "--role", "face_detector")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "models" / "salient" / "u2netp.onnx").stat().st_size > 1_000_000
    assert (tmp_path / "models" / "face_detector" / "centerface.onnx").exists()
    assert f"use RESTYLE_MODELS_DIR={tmp_path / 'models'}" in done.stdout


def test_an_unknown_role_is_a_usage_error(tmp_path):
    done = download(tmp_path, "--role", "unet")
    assert done.returncode == 2 and "no model role 'unet'" in done.stderr
