"""The crop step: bounding rectangle + margin, plausibility checks and the whole-film fallback."""

from __future__ import annotations

import numpy as np
import pytest

from pneumollm.data.lungs.base import NoSegmenter
from pneumollm.data.lungs.components import dilate_disk, erode_disk, keep_largest_components, lung_pair
from pneumollm.data.lungs.crop import (
    PlausibilityChecks,
    crop_to_lungs,
    expand_box,
    implausibility,
    lung_box,
    mask_bounding_box,
)
from pneumollm.data.lungs.metrics import box_iou, dice

SHAPE = (200, 180)


class FixedMask:
    """A segmenter returning a given mask (None: a failure with a reason)."""

    name = "fixed"

    def __init__(self, mask: np.ndarray | None, failure: str = "") -> None:
        self.mask = mask
        self.last_failure = failure

    def __call__(self, image: np.ndarray, image_id: str) -> np.ndarray | None:
        return self.mask


def blobs(*boxes: tuple[int, int, int, int], shape: tuple[int, int] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for top, left, bottom, right in boxes:
        mask[top:bottom, left:right] = True
    return mask


LEFT_LUNG = (40, 20, 150, 80)
RIGHT_LUNG = (45, 100, 155, 160)
FILM = np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint32).reshape(SHAPE).astype(np.uint8)


def test_two_lungs_are_cropped_to_their_rectangle_plus_margin():
    result = crop_to_lungs(FILM, FixedMask(blobs(LEFT_LUNG, RIGHT_LUNG)), "a.dcm", margin=0.1)
    assert result.status == "cropped" and result.reason == ""
    # union (40, 20, 155, 160): 115 x 140 -> grows by 12 rows and 14 columns each side
    assert result.box == (28, 6, 167, 174)
    top, left, bottom, right = result.box
    np.testing.assert_array_equal(result.image, FILM[top:bottom, left:right])
    assert result.mask is not None and result.mask.sum() == blobs(LEFT_LUNG, RIGHT_LUNG).sum()


def test_zero_margin_gives_the_exact_lung_rectangle():
    result = crop_to_lungs(FILM, FixedMask(blobs(LEFT_LUNG, RIGHT_LUNG)), "a.dcm", margin=0.0)
    assert result.box == (40, 20, 155, 160)


def test_margin_is_clipped_to_the_film():
    assert expand_box((5, 5, 190, 170), 0.5, SHAPE) == (0, 0, 200, 180)


def test_a_small_stray_blob_does_not_stretch_the_crop():
    mask = blobs(LEFT_LUNG, RIGHT_LUNG, (185, 5, 190, 10))
    result = crop_to_lungs(FILM, FixedMask(mask), "a.dcm", margin=0.0)
    assert result.status == "cropped" and result.box == (40, 20, 155, 160)


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (blobs(), "empty"),
        (blobs(LEFT_LUNG), "only one lung"),
        (blobs(LEFT_LUNG, (100, 120, 110, 130)), "only one lung"),
        (blobs((10, 20, 14, 24), (10, 100, 14, 104)), "too small"),
        (blobs((0, 0, 200, 85), (0, 95, 200, 180)), "too large"),
        (blobs((20, 40, 90, 140), (110, 50, 180, 150)), "not side by side"),
        (blobs((0, 0, 120, 60), (40, 100, 150, 160)), "touches the film border"),
    ],
    ids=["empty", "one-blob", "tiny-second", "too-small", "too-large", "stacked", "corner"],
)
def test_implausible_masks_fall_back_to_the_whole_film(mask, expected):
    result = crop_to_lungs(FILM, FixedMask(mask), "a.dcm", margin=0.05)
    assert result.status == "fallback"
    assert expected in result.reason
    assert result.box is None and result.image is FILM


def test_one_border_side_is_tolerated():
    # tightly framed films: lung bases may reach the bottom edge
    mask = blobs((40, 20, 200, 80), (45, 100, 200, 160))
    assert implausibility(mask) == ""
    assert crop_to_lungs(FILM, FixedMask(mask), "a.dcm").status == "cropped"


def test_checks_are_configurable():
    mask = blobs(LEFT_LUNG, RIGHT_LUNG)
    strict = PlausibilityChecks(min_area=0.9)
    assert "too small" in implausibility(mask, strict)
    assert crop_to_lungs(FILM, FixedMask(mask), "a.dcm", checks=strict).status == "fallback"


def test_segmenter_failure_reason_is_recorded():
    result = crop_to_lungs(FILM, FixedMask(None, "no CheXmask row for 'a.dcm'"), "a.dcm")
    assert result.status == "fallback" and result.reason == "no CheXmask row for 'a.dcm'"
    assert crop_to_lungs(FILM, FixedMask(None), "a.dcm").reason == "no lung mask available"


def test_lungs_none_keeps_the_film():
    result = crop_to_lungs(FILM, NoSegmenter(), "a.dcm")
    assert result.status == "not_cropped" and result.box is None and result.image is FILM


def test_mask_of_the_wrong_shape_is_an_error_naming_the_film():
    with pytest.raises(ValueError, match=r"b\.dcm.*\(10, 10\)"):
        crop_to_lungs(FILM, FixedMask(np.ones((10, 10), bool)), "b.dcm")


def test_negative_margin_is_refused():
    with pytest.raises(ValueError, match="margin"):
        crop_to_lungs(FILM, FixedMask(blobs(LEFT_LUNG, RIGHT_LUNG)), "a.dcm", margin=-0.1)


def test_bounding_box_convention_is_exclusive():
    assert mask_bounding_box(blobs((3, 4, 5, 9))) == (3, 4, 5, 9)
    assert mask_bounding_box(blobs()) is None
    assert lung_box(blobs()) is None


def test_metrics():
    a, b = blobs((0, 0, 10, 10)), blobs((0, 5, 10, 15))
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(blobs(), blobs()) == 1.0
    assert box_iou((0, 0, 10, 10), (0, 5, 10, 15)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_component_helpers():
    mask = blobs(LEFT_LUNG, RIGHT_LUNG, (185, 5, 190, 10), (170, 60, 180, 70))
    assert keep_largest_components(mask, 2).sum() == blobs(LEFT_LUNG, RIGHT_LUNG).sum()
    # a big region hugging the film's right edge is not a lung; the pair keeps one region per side
    edge = blobs(LEFT_LUNG, (0, 172, 200, 180))
    assert lung_pair(edge).sum() == blobs(LEFT_LUNG).sum()
    square = blobs((50, 50, 100, 100))
    assert dilate_disk(square, 3).sum() > square.sum() > erode_disk(square, 3).sum()
    assert erode_disk(blobs((0, 0, 50, 50)), 3, outside_is_mask=True)[0, 0]
    assert not erode_disk(blobs((0, 0, 50, 50)), 3)[0, 0]
