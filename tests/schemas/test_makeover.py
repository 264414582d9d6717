"""The room makeover's upload contract: what an upload may contain, how its defaults are filled,
and how render parameters are settled for every pipeline."""
from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from agents.makeover.stages import admit
from schemas import ErrorCode, MakeoverUpload, StageFailure
from schemas.params import RenderDefaults, resolve_render
from streams.core.settings import Settings


def test_a_minimal_upload_is_valid_and_defaults_are_filled_from_settings():
    upload = MakeoverUpload.model_validate({"pipeline": "room_makeover", "image": "s3://b/k.jpg",
                                         "style": "Cozy"})
    settings = Settings(default_steps=12, default_width=256, default_height=192)
    job = admit(upload, "job-1", settings.styles, settings.render_defaults, now=1.0,
                rng=random.Random(5))
    assert job.style == "cozy"
    assert (job.params.steps, job.params.width, job.params.height) == (12, 256, 192)
    assert 0 <= job.params.seed < 2**32  # chosen, and recorded in the job
    assert job.params.negative_prompt == settings.default_negative_prompt


def test_given_params_win_over_defaults():
    upload = MakeoverUpload.model_validate({
        "pipeline": "room_makeover", "image": "s3://b/k.jpg", "style": "modern",
        "params": {"steps": 3, "guidance": 0, "controlnet_scale": 0.5, "seed": 0,
                   "width": 72, "height": 64, "negative_prompt": "", "num_images": 4}})
    settings = Settings()
    params = admit(upload, "j", settings.styles, settings.render_defaults, 1.0,
                   random.Random()).params
    assert params.model_dump() == {"steps": 3, "guidance": 0.0, "controlnet_scale": 0.5,
                                   "seed": 0, "width": 72, "height": 64, "negative_prompt": "",
                                   "num_images": 4}


@pytest.mark.parametrize("bad", [
    {"image": "s3://b/k"},  # no style
    {"style": "modern"},  # no image
    {"image": "s3://b/k", "style": "modern", "pipeline": "other"},
    {"image": "s3://b/k", "style": "modern", "params": {"num_images": 0}},
    {"image": "s3://b/k", "style": "modern", "params": {"steps": 151}},
    {"image": "s3://b/k", "style": "modern", "params": {"controlnet_scale": 2.5}},
    {"image": "s3://b/k", "style": "modern", "params": {"seed": -1}},
    {"image": "s3://b/k", "style": "modern", "params": {"height": 513}},
    {"image": "s3://b/k", "style": "modern", "job_id": "has spaces"},
    {"image": "s3://b/k", "style": "modern", "schema_version": 2},
    {"image": "s3://b/k", "style": "modern", "surprise": True},
])
def test_schema_violations_are_rejected(bad):
    with pytest.raises(ValidationError):
        MakeoverUpload.model_validate({"pipeline": "room_makeover", **bad})


def test_unknown_style_names_the_choices_and_extra_styles_extend_them():
    upload = MakeoverUpload(pipeline="room_makeover", image="s3://b/k", style="art-deco")
    with pytest.raises(StageFailure) as failure:
        admit(upload, "j", Settings().styles, Settings().render_defaults, 1.0, random.Random())
    assert failure.value.error.code is ErrorCode.UNKNOWN_STYLE
    assert "minimalist" in failure.value.error.message
    extended = Settings(extra_styles={"Art-Deco": "an art deco interior, brass, geometric"})
    assert admit(upload, "j", extended.styles, extended.render_defaults, 1.0,
                 random.Random()).style == "art-deco"


def test_render_parameters_are_settled_one_way_for_every_pipeline():
    defaults = RenderDefaults(steps=30, guidance=7.5, controlnet_scale=1.0, width=512,
                              height=512, negative_prompt="blurry", num_images=1)
    given = {"steps": 4, "guidance": 0.0, "negative_prompt": "", "seed": None, "width": None}
    first = resolve_render(given, defaults, random.Random(3))
    assert (first.steps, first.guidance, first.negative_prompt) == (4, 0.0, "")  # 0 and "" win
    assert (first.width, first.height, first.controlnet_scale) == (512, 512, 1.0)
    assert first == resolve_render(given, defaults, random.Random(3))  # the seed is recorded
    assert resolve_render({**given, "seed": 7}, defaults, random.Random(3)).seed == 7


def test_a_derived_render_size_is_bounded_before_anything_is_resized():
    from agents.condition.stages import target_size
    from schemas.conditioning import Fit
    from schemas.params import RenderLimits, bounded_size

    limits = RenderLimits(max_side=2048, max_pixels=2048 * 2048,
                          max_request_pixels=4 * 2048 * 2048)
    derived = target_size((1, 1408), Fit.INSIDE, 1408, None, 512)
    assert derived == (1408, 1982464)  # one side given: the other follows the aspect
    with pytest.raises(StageFailure) as refused:
        bounded_size(*derived, limits)
    assert refused.value.error.code is ErrorCode.INVALID_PARAMS
    assert "1408x1982464 px" in refused.value.error.message
    with pytest.raises(StageFailure):
        bounded_size(2048, 2056, limits)  # a side over
    with pytest.raises(StageFailure):
        bounded_size(2048, 2048, RenderLimits(max_side=2048, max_pixels=1024 * 1024,
                                              max_request_pixels=1024 * 1024))
    assert bounded_size(2048, 2048, limits) == (2048, 2048)
    # The request's budget counts every image it renders together.
    assert bounded_size(2048, 2048, limits, num_images=4) == (2048, 2048)
    with pytest.raises(StageFailure, match="5 images of 2048x2048 px are 20,971,520 px"):
        bounded_size(2048, 2048, limits, num_images=5)
