"""Each stage on its own, on tiny random-weight models and real interior photos (no Kafka)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from PIL import Image

from agents.makeover import stages as makeover
from agents.models.depth import DepthEstimator
from agents.models.detect import Detector
from agents.models.embed import ImageEmbedder
from gpu_agent.engine import RenderEngine
from schemas import Box, Detection, Product, ProductMatch, RenderParams
from streams.adapters.index.local import LocalIndex
from streams.core.settings.makeover import DEFAULT_STYLES


@pytest.fixture(scope="module")
def detector(tiny_models):
    return Detector.from_pretrained(str(tiny_models / "detector"))


@pytest.fixture(scope="module")
def embedder(tiny_models):
    return ImageEmbedder.from_pretrained(str(tiny_models / "embedder"))


def test_detection_finds_configured_labels_with_boxes_inside_the_photo(detector, room_image):
    found = detector.detect(room_image, ["sofa", "lamp", "rug"], threshold=0.0, max_detections=5)
    assert 0 < len(found) <= 5
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    for detection in found:
        assert detection.label in {"sofa", "lamp", "rug"}
        box = detection.box
        assert 0 <= box.x0 < box.x1 <= room_image.width
        assert 0 <= box.y0 < box.y1 <= room_image.height


def test_no_labels_or_an_unreachable_threshold_means_no_detections(detector, room_image):
    assert detector.detect(room_image, [], 0.0, 5) == []
    assert detector.detect(room_image, ["sofa"], threshold=1.01, max_detections=5) == []


def test_crop_embeddings_are_unit_vectors_one_per_detection(embedder, room_image):
    detections = [Detection(label="sofa", score=0.9, box=Box(x0=10, y0=20, x1=300, y1=400)),
                  Detection(label="lamp", score=0.5, box=Box(x0=0, y0=0, x1=3, y1=3))]
    embedded = makeover.embed_detections(room_image, detections, embedder)
    vectors = np.array([d.embedding for d in embedded])
    assert vectors.shape == (2, embedder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_retrieval_returns_each_catalog_product_once_best_first(tmp_path, embedder, room_photos):
    index = LocalIndex(tmp_path / "index")
    images = [Image.open(p).convert("RGB").resize((64, 64)) for p in room_photos[:4]]
    products = [Product(product_id=f"p{i}", caption=f"product {i}") for i in range(4)]
    index.upsert_now(products, embedder.embed_images(images))
    # A crop that *is* product p2's photo must match p2 first, with cosine ~1.
    detection = Detection(label="sofa", score=0.9, box=Box(x0=0, y0=0, x1=64, y1=64))
    matches = asyncio.run(makeover.match_products(
        makeover.embed_detections(images[2], [detection, detection], embedder), index, k=3,
        min_score=-1.0))
    assert matches[0].product_id == "p2" and matches[0].score == pytest.approx(1.0, abs=1e-4)
    assert len({m.product_id for m in matches}) == len(matches) == 3


def test_a_room_with_no_detections_gets_the_style_prompt_alone():
    prompt = makeover.compose_prompt(DEFAULT_STYLES["rustic"], [], 1.0, 0.8, 4)
    assert prompt == f"({DEFAULT_STYLES['rustic']})1"


def test_the_prompt_weights_matched_captions_and_neutralises_their_syntax():
    box = Box(x0=0, y0=0, x1=1, y1=1)
    matches = [ProductMatch(product_id=f"p{i}", caption=caption, score=0.9, box=box,
                            label="sofa")
               for i, caption in enumerate(["Sofa, green (velvet)++", "Lamp", "Rug", "Vase"])]
    prompt = makeover.compose_prompt("a modern room", matches, 1.2, 0.7, max_products=3)
    assert prompt == "(a modern room)1.2, (Sofa, green velvet)0.7, (Lamp)0.7, (Rug)0.7"
    from compel.prompt_parser import PromptParser

    fragments = PromptParser().parse_conjunction(prompt).prompts[0].children
    weights = {f.text: f.weight for f in fragments if f.text != ","}
    assert weights == {"a modern room": 1.2, "Sofa , green velvet": 0.7, "Lamp": 0.7, "Rug": 0.7}


def test_depth_map_matches_the_photo_size_and_spans_the_range(tiny_models, room_image):
    estimator = DepthEstimator.from_pretrained(str(tiny_models / "depth"))
    small = room_image.resize((120, 90))
    depth = estimator.estimate(small)
    assert depth.size == (120, 90) and depth.mode == "L"
    values = np.asarray(depth)
    assert values.min() == 0 and values.max() == 255


def test_rendering_is_reproducible_from_the_seed_and_reports_every_step(tiny_models):
    engine = RenderEngine(cache_size=1)
    control = Image.linear_gradient("L").convert("RGB")
    params = RenderParams(steps=3, guidance=5.0, controlnet_scale=1.0, seed=11, width=64,
                          height=48, negative_prompt="blurry", num_images=2)
    steps = []
    prompt = "(a cozy room)1.0, (green velvet sofa)0.8"
    ids = (str(tiny_models / "diffusion"), str(tiny_models / "controlnet_depth"))
    first = engine.render(*ids, prompt, control, params, lambda k, n, _latents: steps.append((k, n)))
    again = engine.render(*ids, prompt, control, params)
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert [i.size for i in first] == [(64, 48), (64, 48)]
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))  # seed, seed+1
    other = engine.render(*ids, prompt, control, params.model_copy(update={"seed": 12}))
    assert np.array_equal(np.asarray(other[0]), np.asarray(first[1]))
    assert engine.device == "cpu" and len(engine._pipelines) == 1  # loaded once, kept


def test_weighted_prompts_encode_once_and_exactly_as_compel_does(tiny_models):
    """The engine keeps each text's conditioning (the default negative prompt, a batch's shared
    prompt): a kept conditioning equals a fresh compel encoding, and weights still count."""
    from compel import Compel

    from gpu_agent.prompts import PromptEncoder

    engine = RenderEngine("cpu", "float32")
    diffusion = str(tiny_models / "diffusion")
    pipe = engine.pipeline(diffusion, str(tiny_models / "controlnet_depth"))
    encoder = PromptEncoder(cache_size=2)
    prompt = "(a cozy room)1.0, (green velvet sofa)0.8"
    first = encoder.embed(diffusion, pipe, prompt, "blurry")
    again = encoder.embed(diffusion, pipe, prompt, "blurry")
    assert again["prompt_embeds"] is first["prompt_embeds"]  # kept, not encoded again
    with torch.no_grad():
        fresh = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                       truncate_long_prompts=False)(prompt)
    assert torch.equal(first["prompt_embeds"], fresh)
    reweighted = encoder.embed(diffusion, pipe, "(a cozy room)1.0, (green velvet sofa)0.2",
                               "blurry")
    assert not torch.equal(reweighted["prompt_embeds"], first["prompt_embeds"])
    assert len(encoder._conditionings) == 2  # the LRU bound holds


def test_sdxl_renders_and_repaints_with_its_two_text_encoders(tmp_path):
    """RESTYLE_DIFFUSION_FAMILY=sdxl: the SDXL pipelines, with compel's pooled embeddings."""
    from agents.models.tiny import build_tiny_sdxl

    models = build_tiny_sdxl(tmp_path / "sdxl")
    engine = RenderEngine("cpu", "float32", family="sdxl")
    params = RenderParams(steps=2, guidance=7.0, controlnet_scale=1.0, seed=3, width=64,
                          height=64, negative_prompt="blurry", num_images=2)
    control = Image.new("RGB", (96, 80), (90, 90, 90))
    rendered = engine.render(str(models / "diffusion"), str(models / "controlnet_depth"),
                             "(a cozy room)1.0, (green sofa)0.8", control, params)
    assert [image.size for image in rendered] == [(64, 64), (64, 64)]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 64, 32))
    repainted = engine.inpaint(str(models / "inpainting"), "a beach", control.resize((64, 64)),
                               mask, params)
    again = engine.inpaint(str(models / "inpainting"), "a beach", control.resize((64, 64)),
                           mask, params)
    assert np.array_equal(np.asarray(repainted[0]), np.asarray(again[0]))  # seeded
    assert not np.array_equal(np.asarray(repainted[0]), np.asarray(repainted[1]))  # seed + n
