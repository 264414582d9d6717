"""The photo check before any GPU time: each photo holds exactly one face, big enough; near-
duplicates are dropped; the face-centred square crop at the training resolution is what the
trainer learns from. Pure functions over decoded images and a face detector."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from agents.models.faces import Face
from schemas.avatars import PhotoRejection

# A face whose side is under this share of the largest face's side is background (a poster, a
# passer-by far behind), not a second person in the photo.
SECOND_FACE_SHARE = 0.35
# The crop is a head-and-shoulders square this many face sides wide.
CROP_FACE_SIDES = 2.5


@dataclass(frozen=True)
class PhotoRules:
    resolution: int
    min_face_px: int
    duplicate_distance: int  # dHash bits (of 64) at or under which two crops are one photo


@dataclass(frozen=True)
class AcceptedPhoto:
    image: str
    crop: Image.Image
    fingerprint: int

    @property
    def hash(self) -> str:
        return f"{self.fingerprint:016x}"


def check_photo(uri: str, photo: Image.Image, faces: list[Face],
                rules: PhotoRules) -> AcceptedPhoto | PhotoRejection:
    """One photo and the faces found in it: its face crop, or why it cannot be trained on."""
    if not faces:
        return PhotoRejection(image=uri, code="no_face", reason="no face was found")
    largest = max(face.side for face in faces)
    people = [face for face in faces if face.side >= SECOND_FACE_SHARE * largest]
    if len(people) > 1:
        return PhotoRejection(image=uri, code="many_faces",
                              reason=f"{len(people)} faces were found; each photo must show "
                                     f"only the person to train on")
    face = people[0]
    if face.side < rules.min_face_px:
        return PhotoRejection(image=uri, code="face_too_small",
                              reason=f"the face is {face.side:.0f} px; at least "
                                     f"{rules.min_face_px} px are needed "
                                     f"(RESTYLE_AVATAR_MIN_FACE_PX)")
    crop = face_crop(photo, face, rules.resolution)
    return AcceptedPhoto(image=uri, crop=crop, fingerprint=dhash(crop))


def face_crop(photo: Image.Image, face: Face, resolution: int) -> Image.Image:
    """A square around the face (head and shoulders), moved to stay inside the photo and no
    larger than it, at resolution x resolution."""
    side = min(face.side * CROP_FACE_SIDES, photo.width, photo.height)
    cx, cy = face.centre
    x0 = min(max(0.0, cx - side / 2), photo.width - side)
    y0 = min(max(0.0, cy - side / 2), photo.height - side)
    box = (round(x0), round(y0), round(x0 + side), round(y0 + side))
    return photo.crop(box).resize((resolution, resolution), Image.Resampling.LANCZOS)


def dhash(image: Image.Image, size: int = 8) -> int:
    """A 64-bit difference hash: each bit says whether a pixel of the 9x8 grey thumbnail is
    brighter than its right neighbour. Re-encoding, resizing and small colour changes keep it;
    a mirror image or another pose does not."""
    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS),
                      dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def drop_duplicates(photos: list[AcceptedPhoto], max_distance: int
                    ) -> tuple[list[AcceptedPhoto], list[PhotoRejection]]:
    """The photos in order, each kept unless it is within max_distance bits of one kept
    before it."""
    kept: list[AcceptedPhoto] = []
    dropped: list[PhotoRejection] = []
    for photo in photos:
        twin = next((other for other in kept
                     if bin(photo.fingerprint ^ other.fingerprint).count("1") <= max_distance),
                    None)
        if twin is None:
            kept.append(photo)
        else:
            dropped.append(PhotoRejection(image=photo.image, code="duplicate",
                                          reason=f"a near-duplicate of {twin.image}"))
    return kept, dropped


def too_few(accepted: int, minimum: int, rejected: list[PhotoRejection]) -> str:
    """The sentence a training job fails with when too few photos are usable."""
    lines = "; ".join(f"{r.image}: {r.reason}" for r in rejected[:20])
    more = f" (and {len(rejected) - 20} more)" if len(rejected) > 20 else ""
    return (f"{accepted} usable photo(s) of one face; at least {minimum} are needed "
            f"(RESTYLE_AVATAR_MIN_PHOTOS). Rejected: {lines or 'none'}{more}")
