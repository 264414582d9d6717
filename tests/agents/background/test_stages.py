"""Background replacement's stages on their own (no Kafka): keep-masks from text and from mask
images, outpainting with the tiny inpainting pipeline, and the PRECISE / DEFAULT composites, on
real photos (scikit-image's astronaut, cat and rocket; interior photos) and the real u2netp."""
from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from agents.background import masks
from agents.background import stages as background
from agents.models.segment import BoxSegmenter, SalientSegmenter
from gpu_agent.engine import RenderEngine
from schemas import Box, Detection, ErrorCode, StageFailure
from schemas.background import BackgroundBatch, ImageSpec, MaskTarget, OutpaintMode
from streams.core.settings import Settings


def skimage_photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


@pytest.fixture(scope="module")
def salient() -> SalientSegmenter:
    return SalientSegmenter.from_pretrained("bundled")


@pytest.fixture(scope="module")
def engine() -> RenderEngine:
    return RenderEngine("cpu", "float32")


class Scene:
    """A room photo with objects pasted at known places, so the true masks are known: a horse
    silhouette (scikit-image) in cat fur, and a rectangular crop of the astronaut photo."""

    def __init__(self, room_photo):
        from skimage import data

        self.image = Image.open(room_photo).convert("RGB").resize((640, 480))
        silhouette = data.horse()
        horse = Image.fromarray((~silhouette).astype(np.uint8) * 255).resize(
            (200, 164), Image.Resampling.NEAREST)
        fur = skimage_photo("chelsea").resize((200, 164))
        self.image.paste(fur, (40, 260), horse)
        self.horse = np.zeros((480, 640), dtype=bool)
        self.horse[260:424, 40:240] = np.asarray(horse) >= 128
        self.horse_box = Box(x0=30, y0=250, x1=250, y1=434)
        person = skimage_photo("astronaut").crop((130, 0, 390, 300)).resize((130, 150))
        self.image.paste(person, (460, 60))
        self.person = np.zeros((480, 640), dtype=bool)
        self.person[60:210, 460:590] = True
        self.person_box = Box(x0=455, y0=55, x1=595, y1=215)

    def detect(self, image, labels):
        """The scene knows where its objects are: it answers for the labels asked, as a
        detector would (the real one needs weights this machine cannot download)."""
        known = {"horse": self.horse_box, "person": self.person_box}
        return [Detection(label=label, score=0.9, box=known[label])
                for label in labels if label in known]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def job_for(image_uri="s3://b/photo.png", **fields):
    batch = BackgroundBatch(pipeline="background_replace", batch_id="b1", images=[image_uri],
                            prompt="a beach at sunset", **fields)
    params = background.resolve_params(batch, Settings(), Settings().render_defaults,
                                        random.Random(1))
    spec = ImageSpec(uri=image_uri, name="photo.png", mask_prompt=batch.mask_prompt,
                     mask_image=batch.mask_image)
    return background.image_job(batch, "b1", spec, params, "s3://restyle", 0.0)


# --- masks from text ---

def test_a_mask_prompt_keeps_exactly_the_named_objects_pixels(room_photos, salient):
    scene = Scene(room_photos[3])
    job = job_for(mask_prompt="horse")
    keep, labels = background.keep_mask(scene.image, job, scene.detect, salient.segment,
                                        salient.main_object, ["person"], True)
    kept = masks.as_bool(keep)
    assert labels == ["horse"]
    assert iou(kept, scene.horse) > 0.9  # the horse's outline, not its box
    assert not (kept & scene.person).any()  # the unnamed person is not kept

    both, labels = background.keep_mask(scene.image, job_for(mask_prompt="horse, person"),
                                        scene.detect, salient.segment, salient.main_object,
                                        [], True)
    kept = masks.as_bool(both)
    assert labels == ["horse", "person"]
    assert iou(kept & ~scene.person, scene.horse) > 0.9
    assert (kept & scene.person).sum() > 0.5 * scene.person.sum()


def test_inpainting_replaces_the_named_object_and_keeps_the_rest(room_photos, salient):
    scene = Scene(room_photos[3])
    job = job_for(mask_prompt="horse", mask_target=MaskTarget.REPLACE)
    keep, _ = background.keep_mask(scene.image, job, scene.detect, salient.segment,
                                   salient.main_object, [], True)
    kept = masks.as_bool(keep)
    assert iou(~kept, scene.horse) > 0.9
    assert kept[scene.person].all()


def test_a_named_object_that_is_not_there_fails_the_image_with_the_labels(room_photos, salient):
    scene = Scene(room_photos[3])
    with pytest.raises(StageFailure) as failure:
        background.keep_mask(scene.image, job_for(mask_prompt="bus, dog"), scene.detect,
                             salient.segment, salient.main_object, [], True)
    assert failure.value.error.code is ErrorCode.MASK_EMPTY
    assert "bus, dog" in failure.value.error.message


def test_without_a_mask_input_the_salient_object_is_kept_when_nothing_is_detected(salient):
    photo = skimage_photo("chelsea")
    keep, labels = background.keep_mask(photo, job_for(), lambda image, labels: [],
                                        salient.segment, salient.main_object, ["dog"], True)
    assert labels == ["salient object"]
    assert 0.2 < masks.kept_share(keep) < 0.9  # the cat, not the whole frame


def test_sam_segments_each_box_into_a_pixel_mask_of_the_image(tiny_models, room_image):
    segmenter = BoxSegmenter.from_pretrained(str(tiny_models / "segmenter"))
    boxes = [Box(x0=10, y0=20, x1=200, y1=300), Box(x0=300, y0=50, x1=420, y1=200)]
    regions = segmenter.segment(room_image, boxes)
    assert len(regions) == 2
    assert all(r.shape == (room_image.height, room_image.width) and r.dtype == bool
               for r in regions)
    keep = masks.keep_mask_from_detections(room_image.size, [
        Detection(label="a", score=1, box=b) for b in boxes], regions)
    outside = np.ones((room_image.height, room_image.width), dtype=bool)
    for b in boxes:
        outside &= ~masks.box_region(room_image.size, b)
    assert not masks.as_bool(keep)[outside].any()  # a mask never leaks out of its box


def test_labels_are_read_from_a_mask_prompt():
    assert background.labels_of("Bus, person and dog; bus") == ["bus", "person", "dog"]


# --- mask images ---

def test_a_mask_image_of_another_size_is_refused_with_both_sizes():
    with pytest.raises(StageFailure) as failure:
        masks.keep_mask_from_mask_image(Image.new("L", (10, 10), 255), (20, 10))
    assert failure.value.error.code is ErrorCode.INVALID_MASK
    assert "10x10" in failure.value.error.message and "20x10" in failure.value.error.message


def test_a_soft_grey_mask_is_refused_and_an_anti_aliased_one_accepted():
    soft = Image.linear_gradient("L").resize((64, 64))
    with pytest.raises(StageFailure) as failure:
        masks.keep_mask_from_mask_image(soft, (64, 64))
    assert "not black and white" in failure.value.error.message
    crisp = np.zeros((64, 64), dtype=np.uint8)
    crisp[16:48, 16:48] = 255
    crisp[16, 16:48] = 128  # one anti-aliased edge row
    keep = masks.keep_mask_from_mask_image(Image.fromarray(crisp), (64, 64))
    assert masks.kept_share(keep) == pytest.approx(32 * 32 / 64 / 64, abs=0.01)


def test_a_mask_that_keeps_everything_or_nothing_fails_the_image():
    photo = Image.new("RGB", (32, 32))
    for value in (0, 255):
        with pytest.raises(StageFailure) as failure:
            background.keep_mask(photo, job_for(mask_image="s3://b/m.png"), None, None, None,
                                 [], True, mask_image=Image.new("L", (32, 32), value))
        assert failure.value.error.code is ErrorCode.MASK_EMPTY


def test_a_generation_size_derived_from_a_sliver_of_a_photo_is_refused_before_resizing():
    """One side given, the other from the photo's aspect: a 1 px wide photo 1408 px wide would
    be 1,982,464 px tall. The job fails with the size; nothing is resized."""
    photo = Image.new("RGB", (1, 1408))
    job = job_for(params={"width": 1408})
    with pytest.raises(StageFailure) as refused:
        background.render_inputs(photo, Image.new("L", (1, 1408), 255), job, 512, 0.015,
                                 Settings().render_limits)
    assert refused.value.error.code is ErrorCode.INVALID_PARAMS
    assert "1408x1982464 px" in refused.value.error.message


# --- outpainting and the two modes ---

def outpaint(engine, tiny_models, photo, keep, mode):
    job = job_for(mode=mode, params={"seed": 3, "steps": 2})
    small, repaint, params = background.render_inputs(photo, keep, job, 64, 0.015,
                                                      Settings().render_limits)
    assert (params.width, params.height) == small.size
    generated = engine.inpaint(str(tiny_models / "inpainting"), job.prompt, small, repaint,
                               params)
    assert len(generated) == 1 and generated[0].size == small.size
    return background.finish(photo, generated[0], keep, OutpaintMode(mode), 0.015)


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "rocket"])
def test_precise_mode_keeps_every_kept_pixel_bit_identical(engine, tiny_models, salient, name):
    photo = skimage_photo(name)
    keep = Image.fromarray(salient.main_object(photo).astype(np.uint8) * 255)
    if masks.kept_share(keep) < 0.05:  # the rocket is thin: keep its box region instead
        keep = masks.keep_mask_from_detections(photo.size, [Detection(
            label="rocket", score=1, box=Box(x0=280, y0=40, x1=360, y1=420))])
    out = outpaint(engine, tiny_models, photo, keep, "PRECISE")
    assert out.size == photo.size
    kept = masks.as_bool(keep)
    original, result = np.asarray(photo), np.asarray(out)
    assert np.array_equal(result[kept], original[kept])
    # ... and the background is new.
    changed = np.any(result != original, axis=2)
    assert changed[~kept].mean() > 0.9


def test_default_mode_blends_the_kept_object_into_the_new_background(engine, tiny_models,
                                                                      salient):
    photo = skimage_photo("astronaut")
    keep = Image.fromarray(salient.main_object(photo).astype(np.uint8) * 255)
    out = outpaint(engine, tiny_models, photo, keep, "DEFAULT")
    kept = masks.as_bool(keep)
    feather = masks.feather_px(photo.size, 0.015)
    core = masks._erode(kept, 2 * feather)
    border = kept & ~masks._erode(kept, max(1, feather // 2))
    original, result = np.asarray(photo).astype(int), np.asarray(out).astype(int)
    assert np.array_equal(result[core], original[core])  # the object itself is untouched
    changed = np.any(result != original, axis=2)
    assert changed[border].mean() > 0.5  # its edge is blended with the painted scene


def test_default_lets_the_model_repaint_a_band_inside_the_object_and_precise_does_not():
    keep = np.zeros((100, 100), dtype=bool)
    keep[20:80, 20:80] = True
    keep_image = Image.fromarray(keep.astype(np.uint8) * 255)
    precise = masks.as_bool(masks.repaint_mask(keep_image, "PRECISE", 5))
    default = masks.as_bool(masks.repaint_mask(keep_image, "DEFAULT", 5))
    assert np.array_equal(precise, ~keep)
    band = keep & ~masks._erode(keep, 5)
    assert default[band].all() and not default[masks._erode(keep, 5)].any()


def test_default_keeps_no_trace_of_the_old_background_outside_the_object():
    photo = skimage_photo("astronaut")
    keep = np.zeros((photo.height, photo.width), dtype=bool)
    keep[100:400, 150:350] = True
    generated = Image.new("RGB", photo.size, (0, 255, 0))
    out = np.asarray(masks.composite_default(photo, generated, Image.fromarray(
        keep.astype(np.uint8) * 255), 8))
    assert (out[~keep] == (0, 255, 0)).all()


def test_render_size_follows_the_photo_aspect_in_multiples_of_8():
    assert masks.render_size((1024, 768), 512, None) == (512, 384)
    assert masks.render_size((100, 333), 512, None) == (96, 328)
    assert masks.render_size((4000, 100), 512, None) == (512, 64)
    assert masks.render_size((1024, 768), 512, (640, 480)) == (640, 480)
    assert masks.render_size((1024, 768), 512, (640, 0)) == (640, 480)  # one side given
    assert masks.render_size((1024, 768), 512, (0, 240)) == (320, 240)


def test_a_batch_larger_than_the_limit_is_refused_with_its_size(monkeypatch):
    monkeypatch.setattr(background, "MAX_BATCH_IMAGES", 3)
    batch = BackgroundBatch(pipeline="background_replace", prompt="x", images=["s3://b/p/"])
    listing = {"s3://b/p/": [f"s3://b/p/{n}.png" for n in range(4)]}
    with pytest.raises(StageFailure, match="expands to 4 images; at most 3"):
        background.expand(batch, listing)


# --- batches ---

def test_a_batch_expands_prefixes_and_gives_each_image_a_stable_job_id():
    batch = BackgroundBatch(
        pipeline="background_replace", batch_id="spring", prompt="a beach",
        mask_prompt="bus",
        images=["s3://b/one.png", {"uri": "s3://b/two.png", "mask_prompt": "dog"},
                "s3://b/more/", "s3://b/one.png"])
    listings = {"s3://b/more/": ["s3://b/more/a.jpg", "s3://b/more/notes.txt",
                                 "s3://b/more/sub/b.PNG"]}
    specs = background.expand(batch, listings)
    assert [(s.uri, s.name, s.mask_prompt) for s in specs] == [
        ("s3://b/one.png", "one.png", "bus"), ("s3://b/two.png", "two.png", "dog"),
        ("s3://b/more/a.jpg", "a.jpg", "bus"), ("s3://b/more/sub/b.PNG", "sub/b.PNG", "bus")]
    assert background.job_id_for("spring", "s3://b/one.png") == \
        background.job_id_for("spring", "s3://b/one.png") != \
        background.job_id_for("autumn", "s3://b/one.png")


def test_an_empty_prefix_or_one_mask_image_for_a_prefix_is_refused():
    empty = BackgroundBatch(pipeline="background_replace", prompt="x", images=["s3://b/none/"])
    with pytest.raises(StageFailure, match="no images under s3://b/none/"):
        background.expand(empty, {"s3://b/none/": []})
    masked = BackgroundBatch(pipeline="background_replace", prompt="x", images=["s3://b/p/"],
                             mask_image="s3://b/m.png")
    with pytest.raises(StageFailure, match="one mask image"):
        background.expand(masked, {"s3://b/p/": ["s3://b/p/a.png"]})


def test_quality_maps_to_steps_and_cfg_scale_to_guidance_and_the_seed_is_recorded():
    settings = Settings()
    batch = BackgroundBatch(pipeline="background_replace", prompt="x", images=["s3://b/a.png"],
                            params={"quality": "premium", "cfg_scale": 6.5, "num_images": 3})
    params = background.resolve_params(batch, settings, settings.render_defaults,
                                        random.Random(5))
    assert params.steps == settings.quality_steps["premium"] and params.guidance == 6.5
    assert params.num_images == 3 and 0 <= params.seed
    standard = BackgroundBatch(pipeline="background_replace", prompt="x",
                               images=["s3://b/a.png"], params={"seed": 9})
    params = background.resolve_params(standard, settings, settings.render_defaults,
                                        random.Random(5))
    assert params.steps == settings.quality_steps["standard"] and params.seed == 9
