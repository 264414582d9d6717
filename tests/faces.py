"""Real photos for the avatar tests, from the images scikit-image ships: a training set of one
person (the astronaut, Eileen Collins) made by flips, rotations, a closer crop and colour
changes; photos with no face (a cat, a coffee cup, a rocket); a photo of two people (the
astronaut beside the cameraman)."""
from __future__ import annotations

from PIL import Image, ImageEnhance, ImageOps

GREY = (128, 128, 128)


def astronaut() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.astronaut())


def _warm(image: Image.Image) -> Image.Image:
    red, green, blue = image.split()
    return Image.merge("RGB", (red.point(lambda v: min(255, int(v * 1.15))), green,
                               blue.point(lambda v: int(v * 0.8))))


def portrait_set() -> dict[str, Image.Image]:
    """12 photos of one face, each different enough not to count as a near-duplicate."""
    base = astronaut()
    photos: dict[str, Image.Image] = {}
    for mirrored in (False, True):
        source = ImageOps.mirror(base) if mirrored else base
        for angle in (-12, -6, 0, 6, 12):
            photo = source.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=GREY)
            photos[f"{'mirror' if mirrored else 'photo'}{angle:+d}"] = photo
        close = source.crop((100, 0, 356, 256)).resize((512, 512), Image.Resampling.LANCZOS)
        photos[f"{'mirror' if mirrored else 'photo'}-close"] = close
    # Colour changes on some (a different white balance, black and white, brighter).
    photos["photo-12"] = _warm(photos["photo-12"])
    photos["mirror+6"] = ImageOps.grayscale(photos["mirror+6"]).convert("RGB")
    photos["photo-close"] = ImageEnhance.Brightness(photos["photo-close"]).enhance(1.25)
    return photos


def resaved_copy() -> Image.Image:
    """The first photo again, smaller and warmer: the same photo to a near-duplicate check."""
    return _warm(astronaut().resize((400, 400), Image.Resampling.LANCZOS))


def not_faces() -> dict[str, Image.Image]:
    import skimage.data

    return {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
            for name in ("chelsea", "coffee", "rocket")}


def group_photo() -> Image.Image:
    """Two people side by side: the astronaut and the cameraman."""
    import skimage.data

    camera = Image.fromarray(skimage.data.camera()).convert("RGB").resize((512, 512))
    group = Image.new("RGB", (1024, 512))
    group.paste(astronaut(), (0, 0))
    group.paste(camera, (512, 0))
    return group
