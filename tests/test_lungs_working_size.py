"""The crop at the segmenter's working size gives what the film-size path gave: same shrunk film, same masks,
same checks and boxes (pinned from the implementation that shrank with skimage and checked the full mask)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import resize

from pneumollm.data.lungs.components import nearest_indices, resize_mask
from pneumollm.data.lungs.crop import PlausibilityChecks, WorkingMask, _assess, _assess_working, crop_to_lungs
from pneumollm.data.lungs.phantom import drawn_chest
from pneumollm.data.lungs.threshold import ThresholdSegmenter, shrink_film

SHAPES = [((256, 241), (1955, 1841)), ((256, 230), (200, 180)), ((7, 5), (30, 41)), ((40, 60), (40, 200)),
          ((1, 9), (13, 9)), ((120, 90), (119, 350))]


@pytest.mark.parametrize(("small", "large"), SHAPES)
def test_mask_resize_is_skimage_nearest_neighbour(small, large):
    rng = np.random.default_rng(sum(small))
    for source, target in ((small, large), (large, small)):
        mask = rng.random(source) > 0.5
        expected = resize(mask, target, order=0, anti_aliasing=False, preserve_range=True).astype(bool)
        np.testing.assert_array_equal(resize_mask(mask, target), expected)
    assert np.all(np.diff(nearest_indices(256, 1955)) >= 0)


@pytest.mark.parametrize(("film_shape", "shape"), [((1955, 1841), (256, 241)), ((417, 500), (213, 256)),
                                                   ((200, 180), (256, 230)), ((300, 40), (256, 34)),
                                                   ((64, 700), (16, 256))])
def test_film_shrink_is_skimage_resize_within_float32_rounding(film_shape, shape):
    film = (np.random.default_rng(0).random(film_shape) * 255).astype(np.uint8)
    scale = shape[1] / film_shape[1]
    expected = resize(film.astype(np.float32) / 255.0, shape, anti_aliasing=scale < 1)
    small = shrink_film(film, shape)
    assert small.dtype == np.float32 and small.shape == shape
    np.testing.assert_allclose(small, expected, rtol=0, atol=2e-7)


def _blobs(shape, boxes):
    mask = np.zeros(shape, dtype=bool)
    for top, left, bottom, right in boxes:
        mask[top:bottom, left:right] = True
    return mask


@pytest.mark.parametrize("film_shape", [(1955, 1841), (300, 260), (200, 180), (130, 100)])
@pytest.mark.parametrize("boxes", [
    [],
    [(20, 10, 90, 50)],
    [(20, 10, 90, 50), (20, 60, 95, 100)],  # a plausible pair
    [(20, 10, 90, 50), (20, 60, 95, 100), (100, 5, 104, 9)],  # plus a speck
    [(20, 10, 30, 20), (20, 60, 30, 70), (50, 30, 60, 40)],  # three regions of the same size
    [(0, 0, 90, 50), (20, 60, 95, 100)],  # touching two film sides
    [(10, 10, 40, 100), (60, 10, 110, 100)],  # one above the other
    [(20, 10, 90, 50), (20, 60, 30, 70)],  # second lung too small
    [(0, 0, 120, 110)],  # too large
])
def test_checks_at_working_size_match_the_film_size_mask(film_shape, boxes):
    small = _blobs((120, 110), boxes)
    working = WorkingMask(small, film_shape)
    full = working.full()
    for checks in (None, PlausibilityChecks(min_area=0.02, max_border_sides=2)):
        assert _assess_working(working, checks) == _assess(full, checks)


class _Fixed:
    """A segmenter returning a fixed film-size mask, or the same as a WorkingMask."""

    name = "fixed"

    def __init__(self, working: WorkingMask, as_working: bool) -> None:
        self.working = working
        if as_working:
            self.segment_working = lambda image, image_id: self.working

    def __call__(self, image, image_id):
        return self.working.full()


def test_crop_step_gives_the_same_result_from_a_working_mask():
    film = np.zeros((700, 650), dtype=np.uint8)
    working = WorkingMask(_blobs((120, 110), [(20, 10, 90, 50), (22, 60, 95, 100)]), film.shape)
    by_mask = crop_to_lungs(film, _Fixed(working, as_working=False), "a.png", margin=0.075)
    by_working = crop_to_lungs(film, _Fixed(working, as_working=True), "a.png", margin=0.075)
    assert by_working.status == by_mask.status == "cropped"
    assert by_working.box == by_mask.box
    np.testing.assert_array_equal(by_working.mask, by_mask.mask)
    np.testing.assert_array_equal(by_working.image, by_mask.image)
    with pytest.raises(ValueError, match=r"b\.png.*\(10, 10\)"):
        crop_to_lungs(film, _Fixed(WorkingMask(working.small, (10, 10)), as_working=True), "b.png")


# (film shape, seed): crop box without margin and with 0.05, from the skimage-based implementation
# (commit 87b5cab). 200x180 and 150x300 are smaller than the working size (the mask is shrunk back).
PINNED = {
    ((400, 360), 0): ((58, 55, 295, 307), (46, 42, 307, 320)),
    ((1200, 1000), 2): ((169, 150, 886, 850), (133, 115, 922, 885)),
    ((200, 180), 1): ((29, 27, 148, 153), (23, 21, 154, 159)),
    ((256, 256), 1): ((36, 39, 190, 218), (28, 30, 198, 227)),
    ((150, 300), 4): ((22, 46, 111, 255), (18, 36, 115, 265)),
}


@pytest.mark.parametrize(("shape", "seed"), list(PINNED))
def test_drawn_chest_boxes_are_pinned(shape, seed):
    film, _ = drawn_chest(*shape, seed=seed)
    segmenter = ThresholdSegmenter()
    for margin, expected in zip((0.0, 0.05), PINNED[shape, seed]):
        result = crop_to_lungs(film, segmenter, "drawn.png", margin=margin)
        assert (result.status, result.box) == ("cropped", expected)
        assert result.mask.shape == film.shape
    mask = segmenter(film, "drawn.png")
    np.testing.assert_array_equal(mask, result.mask)
