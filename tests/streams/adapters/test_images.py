"""Untrusted input at the edges: URIs and image bytes."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from schemas import ErrorCode, StageFailure
from schemas.uris import parse_uri
from streams.adapters.images import decode_image, fit_control
from tests.conftest import jpeg_bytes, png_declaring


@pytest.mark.parametrize("uri, reason", [
    ("file:///etc/passwd", "outside the allowed file roots"),
    ("file:///srv/rooms/../../etc/passwd", "outside the allowed file roots"),
    ("file://evil.example.com/srv/rooms/a.jpg", "names a host"),
    ("https://example.com/a.jpg", "only s3:// and file://"),
    ("/srv/rooms/a.jpg", "scheme 'none'"),
    ("s3://bucket-only", "is not s3://bucket/key"),
])
def test_uris_outside_policy_are_refused_with_the_reason(uri, reason):
    with pytest.raises(StageFailure) as failure:
        parse_uri(uri, [__import__("pathlib").Path("/srv/rooms")])
    assert failure.value.error.code is ErrorCode.URI_REFUSED
    assert reason in failure.value.error.message


def test_uris_inside_policy_are_accepted(tmp_path):
    assert parse_uri("s3://bucket/a/b.jpg").key == "a/b.jpg"
    photo = tmp_path / "room one.jpg"
    ref = parse_uri(photo.as_uri(), [tmp_path])
    assert ref.scheme == "file" and ref.key == str(photo)


def test_a_real_photo_decodes_with_its_exif_orientation_applied(room_photos):
    rotated = Image.open(room_photos[0]).convert("RGB").resize((60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    buffer = io.BytesIO()
    rotated.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), 10_000).size == (40, 60)


@pytest.mark.parametrize("data, code", [
    (b"", ErrorCode.NOT_AN_IMAGE),
    (b"GIF89a-but-not-really", ErrorCode.NOT_AN_IMAGE),
    (b"<html>not found</html>", ErrorCode.NOT_AN_IMAGE),
    (png_declaring(50_000, 50_000), ErrorCode.IMAGE_TOO_LARGE),
])
def test_bad_bytes_fail_with_a_code(data, code):
    with pytest.raises(StageFailure) as failure:
        decode_image(data, 40_000_000, "upload")
    assert failure.value.error.code is code


def test_the_pixel_limit_is_configurable_and_checked_before_decoding():
    data = jpeg_bytes(Image.new("RGB", (300, 200)))
    assert decode_image(data, 60_000).size == (300, 200)
    with pytest.raises(StageFailure, match="300x200 = 60,000 pixels, above the limit of 59,999"):
        decode_image(data, 59_999)


def test_a_truncated_jpeg_is_reported_as_corrupt():
    data = jpeg_bytes(Image.effect_noise((256, 256), 40).convert("RGB"))
    with pytest.raises(StageFailure) as failure:
        decode_image(data[: len(data) // 2], 10**7)
    assert "corrupt" in failure.value.error.message


def test_a_jpeg_needed_small_is_decoded_at_a_reduced_scale_but_never_below_the_target(
        room_photos):
    from streams.adapters.images import decode_image

    data = room_photos[3].read_bytes()
    full = decode_image(data, 10**9)
    reduced = decode_image(data, 10**9, at_least=256)
    assert reduced.width < full.width and max(reduced.size) >= 256
    assert abs(reduced.width / reduced.height - full.width / full.height) < 0.01


def test_formats_outside_the_photo_formats_are_never_decoded():
    # Pillow would open these (EPS through Ghostscript); restyle refuses them from the header.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    tiff = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tiff, format="TIFF")  # a photo format is read
    assert decode_image(tiff.getvalue(), 10**6).size == (4, 4)
    for refused in (eps, b"8BPS\x00\x01" + b"\x00" * 40, b"icns\x00\x00\x00\x08"):
        with pytest.raises(StageFailure, match="not an image format restyle reads") as failure:
            decode_image(refused, 10**6)
        assert failure.value.error.code is ErrorCode.NOT_AN_IMAGE


@pytest.mark.parametrize("mode", ["L", "RGB", "P"])
def test_a_control_map_made_at_the_render_size_conditions_the_render_as_the_full_map_does(mode):
    """The makeover's depth stage sends its map at the render's size; the GPU worker fits
    whatever map it gets to that size. Both ways the pipeline is given the same pixels: those
    of the full map made RGB and resized bicubically (what the worker did before maps came
    at the render's size)."""
    pixels = np.random.default_rng(7).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    full = Image.fromarray(pixels if mode != "L" else pixels[..., 0])
    full = full.quantize(64) if mode == "P" else full
    for size in [(64, 64), (512, 256), (420, 300)]:
        as_sent = fit_control(full, size)
        assert as_sent.size == size
        given = full.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        assert np.array_equal(np.asarray(fit_control(as_sent, size).convert("RGB")),
                              np.asarray(given))
        assert np.array_equal(np.asarray(fit_control(full, size).convert("RGB")),
                              np.asarray(given))
