"""lungs=chexmask: run-length decoding, the CSV index, matching films to rows, and the real sample."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from pneumollm.data.lungs.chexmask import ChexmaskIndex, ChexmaskSegmenter, rle_decode, rle_encode
from pneumollm.data.lungs.crop import crop_to_lungs
from tests.helpers import shared_path

HEADER = ["Image Index", "Dice RCA (Mean)", "Landmarks", "Left Lung", "Right Lung", "Heart", "Height", "Width"]


def test_rle_decode_uses_one_based_row_major_starts():
    mask = rle_decode("1 2 7 3", (3, 4))
    expected = np.zeros(12, dtype=bool)
    expected[[0, 1, 6, 7, 8]] = True
    np.testing.assert_array_equal(mask, expected.reshape(3, 4))


def test_rle_roundtrip_and_empty_code():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 23)) > 0.6
    np.testing.assert_array_equal(rle_decode(rle_encode(mask), mask.shape), mask)
    assert not rle_decode("", (5, 5)).any()
    assert not rle_decode("nan", (5, 5)).any()


@pytest.mark.parametrize(("code", "problem"), [("1 2 3", "odd count"), ("10 5", "outside"), ("0 2", "outside"),
                                                ("1 x", "non-integer")])
def test_bad_rle_is_a_clear_error(code, problem):
    with pytest.raises(ValueError, match=problem):
        rle_decode(code, (3, 4), "file.csv row 'a.png'")


def lung_codes(shape: tuple[int, int]) -> tuple[str, str]:
    height, width = shape
    right = np.zeros(shape, dtype=bool)  # the patient's right lung lies on the image's left
    left = np.zeros(shape, dtype=bool)
    right[height // 5 : height * 4 // 5, width // 8 : width * 3 // 8] = True
    left[height // 5 : height * 4 // 5, width * 5 // 8 : width * 7 // 8] = True
    return rle_encode(left), rle_encode(right)


def write_csv(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for name, shape, landmarks in rows:
            left, right = lung_codes(shape)
            writer.writerow([name, 0.9, landmarks, left, right, "", shape[0], shape[1]])
    return path


@pytest.fixture
def chexmask_csv(tmp_path):
    return write_csv(tmp_path / "db.csv", [
        ("00001_000.png", (64, 64), "1,2,3"),
        ("00002_000.png", (64, 48), "quoted\nacross lines"),  # a quoted field spanning two lines
        ("patient1/view1_frontal.jpg", (32, 32), ""),
        ("patient2/view1_frontal.jpg", (32, 32), ""),
    ])


def test_index_is_built_once_and_rows_are_read_back(chexmask_csv):
    index = ChexmaskIndex(chexmask_csv)
    assert index.rows == 4
    offset, _ = index.find("00002_000.png")
    row = index.row(offset)
    assert row["Image Index"] == "00002_000.png" and row["Landmarks"] == "quoted\nacross lines"
    assert (row["Height"], row["Width"]) == ("64", "48")


def test_films_match_by_path_base_name_or_stem(chexmask_csv):
    segmenter = ChexmaskSegmenter(chexmask_csv)
    film = np.zeros((128, 128), dtype=np.uint8)
    by_path = segmenter(film, "normal/P1/00001_000.png")
    by_stem = segmenter(film, "normal/P1/00001_000.dcm")
    assert by_path is not None and by_stem is not None
    np.testing.assert_array_equal(by_path, by_stem)
    assert by_path.shape == (128, 128)  # resized from 64x64
    assert by_path.mean() == pytest.approx(2 * 0.6 * 0.25, abs=0.02)
    # the full relative path disambiguates files that share a base name
    assert segmenter(np.zeros((32, 32), np.uint8), "patient1/view1_frontal.jpg") is not None


def test_missing_or_ambiguous_rows_give_none_with_a_reason(chexmask_csv):
    segmenter = ChexmaskSegmenter(chexmask_csv)
    film = np.zeros((64, 64), dtype=np.uint8)
    assert segmenter(film, "cohort/99999_000.dcm") is None
    assert segmenter.last_failure == "no CheXmask row for '99999_000.dcm'"
    assert segmenter(film, "other/view1_frontal.jpg") is None
    assert "several CheXmask rows" in segmenter.last_failure
    result = crop_to_lungs(film, segmenter, "cohort/99999_000.dcm")
    assert result.status == "fallback" and "no CheXmask row" in result.reason


def test_mask_of_another_aspect_ratio_is_not_stretched(chexmask_csv):
    segmenter = ChexmaskSegmenter(chexmask_csv)
    assert segmenter(np.zeros((64, 64), np.uint8), "00002_000.png") is None
    assert "aspect ratio" in segmenter.last_failure


def test_a_matched_film_is_cropped_to_both_lungs(chexmask_csv):
    result = crop_to_lungs(np.zeros((64, 64), np.uint8), ChexmaskSegmenter(chexmask_csv), "00001_000.png", margin=0)
    assert result.status == "cropped" and result.box == (12, 8, 51, 56)


def test_bad_csv_arguments_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lungs\.csv="):
        ChexmaskSegmenter(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ChexmaskSegmenter(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Heart\na.png,\n")
    with pytest.raises(ValueError, match=r"bad\.csv lacks the column\(s\) \['Left Lung'"):
        ChexmaskSegmenter(bad)


@pytest.mark.shared
def test_real_sample_decodes_to_two_plausible_lungs():
    sample = shared_path("chexmask-sample", "ChestX-Ray8.csv")
    segmenter = ChexmaskSegmenter(sample)
    assert segmenter.index.rows == 50
    with sample.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows[:10]:
        shape = (int(row["Height"]), int(row["Width"]))
        assert shape == (1024, 1024)
        left = rle_decode(row["Left Lung"], shape)
        right = rle_decode(row["Right Lung"], shape)
        # radiological convention: the patient's left lung appears on the image's right
        assert np.nonzero(left)[1].mean() > 512 > np.nonzero(right)[1].mean()
        assert not (left & right).any()
        for lung in (left, right):
            assert 0.05 < lung.mean() < 0.25
        film = np.zeros(shape, dtype=np.uint8)
        result = crop_to_lungs(film, segmenter, f"images/{row['Image Index']}", margin=0.0)
        assert result.status == "cropped", result.reason
        top, left_edge, bottom, right_edge = result.box
        assert 0.3 < (bottom - top) * (right_edge - left_edge) / film.size < 0.9
