"""Conditioned generation's stages on their own (no Kafka): the resize transform, canny edges
against OpenCV itself, the segmentation palette, the bucket notification formats, the routing
rules and the loop guard."""
from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest
from PIL import Image

from agents.condition import bucket_events
from agents.condition import stages as conditioning
from agents.models.semantic import SemanticSegmenter
from schemas import ErrorCode, StageFailure
from schemas.conditioning import BucketRule, Conditioning, ConditionParams, Fit
from streams.core.settings import Settings
from tests.agents.background.test_stages import skimage_photo

# --- resize ---

@pytest.mark.parametrize("fit, size, expected", [
    (Fit.COVER, (512, 512), (512, 512)),
    (Fit.CONTAIN, (512, 512), (512, 512)),
    (Fit.INSIDE, (512, 512), (512, 336)),  # 600x400 keeps its aspect within 512x512
])
def test_the_three_fits_give_multiple_of_8_sizes(fit, size, expected):
    photo = skimage_photo("coffee")  # 600 x 400
    target = conditioning.target_size(photo.size, fit, *size, max_side=9999)
    assert target == expected
    fitted = conditioning.fit_image(photo, target, fit)
    assert fitted.size == expected


def test_contain_pads_and_cover_crops():
    photo = Image.new("RGB", (400, 200), (250, 250, 250))
    contained = np.asarray(conditioning.fit_image(photo, (256, 256), Fit.CONTAIN))
    assert (contained[0, :] == 0).all() and (contained[128, :] == 250).all()  # black bands
    covered = np.asarray(conditioning.fit_image(photo, (256, 256), Fit.COVER))
    assert (covered == 250).all()  # filled, the overflow cropped


def test_without_a_size_the_longer_side_becomes_max_side():
    assert conditioning.target_size((1000, 750), Fit.INSIDE, None, None, 512) == (512, 384)
    assert conditioning.target_size((1000, 750), Fit.INSIDE, 256, None, 512) == (256, 192)


def test_exif_orientation_is_applied_before_resizing(tmp_path):
    """A phone photo stored sideways with an EXIF rotation comes out upright."""
    import io

    from streams.adapters.images import decode_image

    upright = Image.new("RGB", (300, 200), (200, 0, 0))
    sideways = upright.rotate(90, expand=True)  # stored 200 x 300
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    sideways.save(buffer, format="JPEG", exif=exif)
    decoded = decode_image(buffer.getvalue(), 10_000_000)
    assert decoded.size == (300, 200)


# --- conditioning maps ---

def test_canny_edges_are_where_opencv_finds_them_on_a_real_photo():
    photo = skimage_photo("astronaut")
    edges = np.asarray(conditioning.canny_map(photo, 100, 200))
    direct = cv2.Canny(np.asarray(photo.convert("L")), 100, 200)
    assert edges.shape == (512, 512, 3)
    assert np.array_equal(edges[..., 0], direct)
    assert 0.02 < (direct > 0).mean() < 0.5  # a real photo has edges, not everywhere
    looser = np.asarray(conditioning.canny_map(photo, 50, 100))[..., 0]
    assert (looser > 0).sum() > (direct > 0).sum()  # the thresholds are honoured


def test_segmentation_maps_use_the_ade20k_palette(tiny_models):
    palette = conditioning.ade20k_palette()
    assert palette.shape == (150, 3) and tuple(palette[0]) == (120, 120, 120)
    segmenter = SemanticSegmenter.from_pretrained(str(tiny_models / "semantic"))
    photo = skimage_photo("coffee")
    classes = segmenter.classes(photo)
    assert classes.shape == (400, 600)
    colored = np.asarray(conditioning.colorize(classes, palette))
    assert np.array_equal(colored[0, 0], palette[classes[0, 0]])
    used = {tuple(c) for c in colored.reshape(-1, 3)}
    assert used <= {tuple(c) for c in palette}


# --- notifications ---

AWS_RECORD = {"Records": [{
    "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
    "eventName": "ObjectCreated:Put",
    "s3": {"bucket": {"name": "photos"},
           "object": {"key": "incoming/summer+trip/caf%C3%A9.jpg", "size": 1024,
                      "eTag": "abc123", "sequencer": "0055AED6DCD90281E5"}}}]}

MINIO_EVENT = {
    "EventName": "s3:ObjectCreated:Put", "Key": "photos/incoming/cat.png",
    "Records": [{"eventVersion": "2.0", "eventSource": "minio:s3",
                 "eventName": "s3:ObjectCreated:Put",
                 "s3": {"bucket": {"name": "photos"},
                        "object": {"key": "incoming%2Fcat.png", "size": 10, "eTag": "e1",
                                   "userMetadata": {"X-Amz-Meta-Prompt": "a tiger"}}}}]}


def test_an_aws_record_names_the_object_with_its_key_decoded():
    found = bucket_events.parse_notification(AWS_RECORD)
    (obj,) = found.created
    assert (obj.bucket, obj.key, obj.size, obj.etag) == ("photos", "incoming/summer trip/café.jpg",
                                                         1024, "abc123")


def test_minio_and_sns_wrapped_events_are_read_and_the_test_event_is_ignored():
    (obj,) = bucket_events.parse_notification(MINIO_EVENT).created
    assert (obj.bucket, obj.key, obj.event) == ("photos", "incoming/cat.png", "ObjectCreated:Put")
    wrapped = {"Type": "Notification", "Message": json.dumps(AWS_RECORD)}
    assert bucket_events.parse_notification(wrapped).created[0].bucket == "photos"
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "photos"}
    found = bucket_events.parse_notification(test_event)
    assert found.created == [] and found.ignored == ["s3:TestEvent"]
    removed = json.loads(json.dumps(AWS_RECORD).replace("ObjectCreated:Put",
                                                        "ObjectRemoved:Delete"))
    assert bucket_events.parse_notification(removed).ignored == ["ObjectRemoved:Delete"]


@pytest.mark.parametrize("data", [
    [], {"hello": "world"}, {"Records": "nope"}, {"Records": [{"eventName": "ObjectCreated:Put"}]},
    {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": ""},
                                                          "object": {"key": "k"}}}]},
])
def test_malformed_notifications_are_refused_with_what_was_expected(data):
    with pytest.raises(StageFailure) as failure:
        bucket_events.parse_notification(data)
    assert failure.value.error.code is ErrorCode.SCHEMA_VIOLATION
    assert "not a bucket notification" in failure.value.error.message


# --- rules ---

def test_the_default_rule_sends_incoming_objects_to_generated_and_ignores_the_rest():
    rules = Settings(s3_bucket="restyle").rules
    rule = bucket_events.match_rule(rules, "restyle", "incoming/cat.jpg")
    assert rule is not None and rule.params.conditioning is Conditioning.CANNY
    assert bucket_events.match_rule(rules, "restyle", "elsewhere/cat.jpg") is None
    assert bucket_events.match_rule(rules, "other-bucket", "incoming/cat.jpg") is None
    assert bucket_events.match_rule(rules, "restyle", "incoming/notes.txt") is None
    obj = bucket_events.CreatedObject("restyle", "incoming/trips/cat.jpg", "ObjectCreated:Put",
                                      etag="e")
    assert bucket_events.output_prefix_for(rule, obj) == \
        "s3://restyle/generated/trips/cat.jpg/"
    # A photo beside another with the same stem gets its own outputs.
    png = bucket_events.CreatedObject("restyle", "incoming/trips/cat.png", "ObjectCreated:Put",
                                      etag="e")
    assert bucket_events.output_prefix_for(rule, png) == "s3://restyle/generated/trips/cat.png/"


def test_the_pipelines_own_outputs_never_trigger_it():
    rules = [BucketRule(name="all", bucket="*", prefix="", output_prefix="generated/"),
             BucketRule(name="other", bucket="in", prefix="x/", output_bucket="out",
                        output_prefix="made/")]
    assert bucket_events.is_own_output(rules, "any", "generated/cat/0.png")
    assert bucket_events.is_own_output(rules, "out", "made/a/0.png")
    assert not bucket_events.is_own_output(rules, "in", "made/a/0.png")
    # A rule that would match everything still does not see its outputs as new inputs.
    assert bucket_events.match_rule(rules, "any", "generated/cat/0.png") is not None


def test_a_job_takes_the_prompt_from_object_metadata_and_is_one_per_object_version():
    settings = Settings(s3_bucket="restyle")
    rule = settings.rules[0]
    obj = bucket_events.CreatedObject("restyle", "incoming/cat.jpg", "ObjectCreated:Put",
                                      etag="v1")
    job = bucket_events.job_for_object(rule, obj, settings, settings.render_defaults,
                                       random.Random(1),
                                       {"prompt": "a%20tiger%20sketch"}, 0.0)
    assert job.prompt == "a tiger sketch" and job.conditioning is Conditioning.CANNY
    assert job.canny == (100, 200) and job.image == "s3://restyle/incoming/cat.jpg"
    default = bucket_events.job_for_object(rule, obj, settings, settings.render_defaults,
                                           random.Random(1), {}, 0.0)
    assert default.prompt == settings.condition_default_prompt
    assert default.job_id == job.job_id  # the same object version, the same job
    newer = bucket_events.CreatedObject("restyle", "incoming/cat.jpg", "ObjectCreated:Put",
                                        etag="v2")
    assert bucket_events.job_id_for(newer) != job.job_id


def test_rule_params_override_defaults_and_bad_thresholds_are_refused():
    settings = Settings()
    params = ConditionParams(conditioning="depth", steps=5, width=320, height=240,
                             fit="cover", canny_low=10, canny_high=20, seed=4)
    job = bucket_events.resolve(params, settings, settings.render_defaults, random.Random(1),
                                None, "j", "s3://b/k", "s3://b/out/", 0.0)
    assert (job.conditioning, job.params.steps, job.size, job.fit, job.params.seed) == \
        (Conditioning.DEPTH, 5, (320, 240), Fit.COVER, 4)
    with pytest.raises(ValueError, match="canny_low must not exceed canny_high"):
        ConditionParams(canny_low=300, canny_high=200)
    with pytest.raises(StageFailure, match="out of order"):
        bucket_events.resolve(ConditionParams(canny_low=300), settings, settings.render_defaults,
                              random.Random(1), None,
                              "j", "s3://b/k", "s3://b/out/", 0.0)


def test_a_named_tenants_upload_cannot_write_outside_its_prefix():
    from schemas.conditioning import ConditionUpload

    settings = Settings(s3_bucket="restyle")
    base = "s3://restyle/tenants/acme"

    def job(output=None):
        upload = ConditionUpload(pipeline="condition", image="s3://restyle/in/cat.png",
                                 tenant="acme", output=output)
        return bucket_events.job_for_upload(upload, "j1", settings, settings.render_defaults,
                                            random.Random(1), 0.0, base)

    assert job().output_prefix == "s3://restyle/tenants/acme/results/j1/"
    assert job(f"{base}/mine/").output_prefix == f"{base}/mine/"
    for elsewhere in ("s3://restyle/results/", "s3://restyle/tenants/globex/",
                      f"{base}/../globex/"):
        with pytest.raises(StageFailure, match="outside this tenant's storage"):
            job(elsewhere)
