"""lungs=threshold: the classical segmenter on drawn, synthetic-demo and real films."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from pneumollm.data.lungs.components import component_masks
from pneumollm.data.lungs.crop import crop_to_lungs, mask_bounding_box
from pneumollm.data.lungs.metrics import box_iou, dice
from pneumollm.data.lungs.phantom import drawn_chest
from pneumollm.data.lungs.threshold import ThresholdSegmenter
from tests.helpers import shared_path


@pytest.mark.parametrize(("shape", "seed"), [((400, 360), 0), ((256, 256), 1), ((1200, 1000), 2)])
def test_drawn_chest_lungs_are_found(shape, seed):
    film, truth = drawn_chest(*shape, seed=seed)
    segmenter = ThresholdSegmenter()
    mask = segmenter(film, "drawn.png")
    assert mask is not None, segmenter.last_failure
    assert mask.shape == film.shape and mask.dtype == bool
    assert dice(mask, truth) > 0.9
    assert box_iou(mask_bounding_box(mask), mask_bounding_box(truth)) > 0.9
    assert len(component_masks(mask)) == 2


def test_drawn_chest_is_cropped_around_both_lungs():
    film, truth = drawn_chest()
    result = crop_to_lungs(film, ThresholdSegmenter(), "drawn.png", margin=0.05)
    assert result.status == "cropped"
    top, left, bottom, right = result.box
    assert truth[top:bottom, left:right].sum() >= 0.99 * truth.sum()


def test_result_does_not_depend_on_the_film_resolution():
    small, _ = drawn_chest(300, 270, seed=3)
    large = np.kron(small, np.ones((4, 4), dtype=np.uint8))  # the same film at 4x the resolution
    segmenter = ThresholdSegmenter()
    box_small = np.array(mask_bounding_box(segmenter(small, "s")))
    box_large = np.array(mask_bounding_box(segmenter(large, "l")))
    np.testing.assert_allclose(box_large / 4, box_small, atol=3)


def test_films_without_lungs_fail_with_a_reason():
    segmenter = ThresholdSegmenter()
    assert segmenter(np.full((100, 100), 128, np.uint8), "flat.png") is None
    assert "uniform" in segmenter.last_failure
    result = crop_to_lungs(np.full((100, 100), 128, np.uint8), segmenter, "flat.png")
    assert result.status == "fallback" and "uniform" in result.reason
    bright = np.full((200, 200), 220, np.uint8)
    bright[:, :20] = 10  # only air along the film's edge: nothing plausible as a lung
    assert segmenter(bright, "edge.png") is None
    assert "no dark region" in segmenter.last_failure


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="working_size"):
        ThresholdSegmenter(working_size=10)
    with pytest.raises(ValueError, match="background_edges"):
        ThresholdSegmenter(background_edges=["left"])
    with pytest.raises(ValueError, match="2-D"):
        ThresholdSegmenter()(np.zeros((10, 10, 3), np.uint8), "rgb.png")


def test_synthetic_demo_cohort_crops_contain_both_lung_fields(tmp_path):
    from PIL import Image

    from pneumollm.data.films import UnreadableImageError, decode_film
    from pneumollm.data.synthetic import demo_mask_path, generate_demo_cohort

    # 16 patients, seed 0, 512 px: the demo's default size; one of its films has a lung that merges
    # with the air outside the body across a thin chest wall.
    labels = generate_demo_cohort(tmp_path, n_patients=16, seed=0, image_size=512, progress=False)
    with open(labels, newline="") as handle:
        files = [row["file"] for row in csv.DictReader(handle)]
    segmenter = ThresholdSegmenter()
    checked = 0
    for file in files:
        try:
            film = decode_film(labels.parent / file).pixels
        except UnreadableImageError:
            continue  # the cohort's deliberately broken files
        truth = np.asarray(Image.open(demo_mask_path(labels, file))) > 127
        result = crop_to_lungs(film, segmenter, file, margin=0.075)
        assert result.status == "cropped", f"{file}: {result.reason}"
        top, left, bottom, right = result.box
        lung_fields = component_masks(truth, 2)
        assert len(lung_fields) == 2
        for lung in lung_fields:
            assert lung[top:bottom, left:right].sum() >= 0.95 * lung.sum(), file
        checked += 1
    assert checked >= 20


def test_air_outside_the_body_is_found_along_the_border():
    film, lungs = drawn_chest()
    segmenter = ThresholdSegmenter()
    from pneumollm.data.lungs.threshold import normalise_contrast

    plain, _ = normalise_contrast(film, segmenter.working_size, segmenter.clahe_clip)
    air = segmenter.outside_air(plain)
    small_lungs = normalise_contrast(lungs.astype(np.uint8) * 255, segmenter.working_size, 0)[0] > 0.5
    assert air[:, :5].mean() > 0.9 and air[:, -5:].mean() > 0.9  # the dark strips left and right
    assert not (air & small_lungs).any()


@pytest.mark.shared
def test_real_films_reach_the_target_iou():
    from pneumollm.data.lungs.evaluate import find_pairs, score_film

    pairs, _ = find_pairs(shared_path("openist-lungs"))
    segmenter = ThresholdSegmenter()
    scores = [score_film(image, mask, segmenter)[0] for image, mask in pairs[::14][:20]]
    assert len(scores) == 20
    assert np.mean([s.box_iou for s in scores]) >= 0.85
    assert np.mean([s.dice for s in scores]) >= 0.85
