"""The shift column's rules: a film like the training films has no reason; a larger, inverted, darker or brighter
film, another modality, photometric interpretation, file kind or bit depth, and an unusual crop fallback each
give theirs. Profiles of several folds merge; films are told by content and their headers read without pixels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumollm.data.film_profile import build_profile, intensity_distance, merge_profiles, read_profile
from pneumollm.data.film_source import FilmSource, cached_sources, film_format, film_source
from pneumollm.inference.shift import intensity_threshold, join_reasons, shift_reasons
from tests.helpers import pydicom_test_file

SIZE = 64


def chest_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Films laid out like a lung crop: a bright body, two dark lungs, exposure and position varying per film."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    films = []
    for _ in range(n):
        film = np.full((SIZE, SIZE), 170.0)
        for centre in (0.3, 0.7):
            cy, cx = SIZE * rng.uniform(0.45, 0.55), SIZE * (centre + rng.uniform(-0.03, 0.03))
            film[((yy - cy) / (SIZE * 0.35)) ** 2 + ((xx - cx) / (SIZE * 0.15)) ** 2 < 1] = 60.0
        film = film * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15) + rng.normal(0, 8, film.shape)
        films.append(np.clip(np.rint(film), 0, 255).astype(np.uint8))
    return np.stack(films)


def dicom_source(rng: np.random.Generator) -> FilmSource:
    return FilmSource("DICOM", int(rng.integers(440, 513)), 512, int(rng.integers(12, 16)),
                      str(rng.choice(["CR", "DX"])), "MONOCHROME2")


@pytest.fixture(scope="module")
def training() -> tuple[dict, np.ndarray]:
    """The profile of 200 DICOM training films (2 % of their lung crops fell back) and 40 more like them."""
    rng = np.random.default_rng(0)
    images = chest_like(rng, 240)
    sources = [dicom_source(rng) for _ in range(200)]
    crops = ["fallback"] * 4 + ["cropped"] * 196
    return build_profile(sources, crops, images[:200]), images[200:]


def reasons_of(profile: dict, image: np.ndarray, source: FilmSource | None = None, crop: str = "cropped") -> list[str]:
    return shift_reasons(profile, source or FilmSource("DICOM", 500, 512, 12, "CR", "MONOCHROME2"), crop, image)


def test_films_like_the_training_films_have_no_shift(training: tuple[dict, np.ndarray]) -> None:
    profile, new = training
    assert profile["films"] == 200 and profile["image_size"] == SIZE
    assert profile["formats"] == {"DICOM": 200} and set(profile["modalities"]) == {"CR", "DX"}
    assert profile["crop"] == {"cropped": 196, "fallback": 4}
    assert all(reasons_of(profile, image) == [] for image in new)


def test_the_intensity_threshold_sits_above_the_training_films_own_distances(training) -> None:
    profile, _ = training
    distance = profile["intensity"]["distance"]
    assert distance["q50"] <= distance["q99"] <= distance["q100"] < intensity_threshold(profile)
    assert intensity_threshold(profile) >= 10.0


def test_a_large_dicom_film_against_small_png_training_films() -> None:
    rng = np.random.default_rng(1)
    images = chest_like(rng, 50)
    profile = build_profile([FilmSource("PNG", 28, 28, 8)] * 50, ["not_cropped"] * 50, images)
    big = FilmSource("DICOM", 1955, 1841, 15, "CR", "MONOCHROME1")
    assert reasons_of(profile, images[0], big, "not_cropped") == [
        "native size 1955x1841 px, training films 28x28 px", "DICOM file, training films PNG images"]
    assert reasons_of(profile, images[0], FilmSource("JPEG", 40, 30, 8), "not_cropped") == []  # within [0.5x, 2x]


def test_an_inverted_film_is_called_inverted(training) -> None:
    profile, new = training
    assert all("input looks inverted (bright where the training films are dark)" in reasons_of(profile, 255 - image)
               for image in new)


def test_a_cohort_without_a_shared_layout_never_calls_a_film_inverted() -> None:
    noise = np.random.default_rng(2).normal(128, 30, (100, SIZE, SIZE)).clip(0, 255).astype(np.uint8)
    profile = build_profile([FilmSource("PNG", 64, 64, 8)] * 100, ["not_cropped"] * 100, noise)
    assert profile["layout"]["correlation"]["q1"] < 0
    assert not any("inverted" in r for image in noise for r in reasons_of(profile, 255 - image))


@pytest.mark.parametrize(("scale", "offset", "word"), [(0.3, 0, "darker"), (0.4, 150, "brighter")])
def test_a_very_dark_or_bright_film_is_far_from_the_training_intensities(training, scale, offset, word) -> None:
    profile, new = training
    for image in new[:10]:
        shifted = np.clip(image * scale + offset, 0, 255).astype(np.uint8)
        (reason,) = reasons_of(profile, shifted)
        assert reason.startswith(f"input intensity far from training films ({word}: mean ")
        distance = float(intensity_distance(np.bincount(shifted.ravel(), minlength=256) / shifted.size,
                                            profile["intensity"]["histogram"]))
        assert distance > intensity_threshold(profile)


def test_header_reasons_modality_photometric_bits_and_file_kind(training) -> None:
    profile, new = training
    image = new[0]
    assert reasons_of(profile, image, FilmSource("DICOM", 500, 512, 12, "MR", "MONOCHROME2")) == [
        "modality MR, training films CR/DX"]
    assert reasons_of(profile, image, FilmSource("DICOM", 500, 512, 12, "CR", "MONOCHROME1")) == [
        "MONOCHROME1 (inverted when decoded), training films MONOCHROME2"]
    assert reasons_of(profile, image, FilmSource("DICOM", 500, 512, 16, "CR", "MONOCHROME2")) == [
        "16 bits, training films 12-15 bits"]
    assert reasons_of(profile, image, FilmSource("PNG", 500, 512, 8)) == ["PNG image, training films DICOM"]
    assert reasons_of(profile, image, FilmSource()) == []  # an unreadable header says nothing


def test_a_crop_fallback_is_unusual_only_when_training_films_rarely_fell_back(training) -> None:
    profile, new = training
    assert reasons_of(profile, new[0], crop="fallback") == [
        "lung crop fell back to the whole film (training films: 2 %)"]
    often = {**profile, "crop": {"fallback": 60, "cropped": 40}}
    assert reasons_of(often, new[0], crop="fallback") == []


def test_the_reasons_join_once_each_in_order() -> None:
    assert join_reasons(["a", "b", "a"]) == "a; b" and join_reasons([]) == ""


def test_fold_profiles_merge_into_one_for_an_ensemble(training) -> None:
    profile, new = training
    other = build_profile([FilmSource("PNG", 1024, 900, 8)] * 40, ["fallback"] * 40, new)
    merged = merge_profiles([profile, None, other])
    assert merged["films"] == 240 and merged["folds"] == 2
    assert merged["native"]["width"] == [min(profile["native"]["width"][0], 1024), 1024]
    assert merged["formats"] == {"DICOM": 200, "PNG": 40} and merged["crop"]["fallback"] == 44
    histograms = np.array([profile["intensity"]["histogram"], other["intensity"]["histogram"]])
    expected = (histograms[0] * 200 + histograms[1] * 40) / 240
    assert np.allclose(merged["intensity"]["histogram"], expected, atol=1e-7)
    assert merged["intensity"]["distance"]["q99"] == max(profile["intensity"]["distance"]["q99"],
                                                         other["intensity"]["distance"]["q99"])
    assert merge_profiles([None, profile]) is profile and merge_profiles([None]) is None


def test_a_profile_file_of_another_format_is_ignored(tmp_path: Path, training) -> None:
    profile, _ = training
    (tmp_path / "ok.json").write_text(json.dumps(profile))
    (tmp_path / "old.json").write_text(json.dumps({**profile, "format": 99}))
    assert read_profile(tmp_path / "ok.json") == profile
    assert read_profile(tmp_path / "old.json") is None and read_profile(tmp_path / "none.json") is None


def test_films_are_told_by_content_whatever_their_names(tmp_path: Path) -> None:
    film = np.random.default_rng(4).integers(0, 255, (40, 30), dtype=np.uint8)
    Image.fromarray(film).save(tmp_path / "a_jpeg", format="JPEG")
    Image.fromarray(film).save(tmp_path / "a_png.dat", format="PNG")
    shutil.copy(pydicom_test_file("RG1_UNCI.dcm"), tmp_path / "IM0001")
    (tmp_path / "notes").write_text("path,label\n")
    assert [film_format(tmp_path / n) for n in ("a_jpeg", "a_png.dat", "IM0001", "notes")] == [
        "JPEG", "PNG", "DICOM", None]
    assert film_source(tmp_path / "a_jpeg") == FilmSource("JPEG", 30, 40, 8)
    assert film_source(tmp_path / "IM0001") == FilmSource("DICOM", 1841, 1955, 15, "CR", "MONOCHROME1")
    assert film_source(tmp_path / "notes") == FilmSource()


def test_headers_are_read_once_per_cohort(tmp_path: Path) -> None:
    path = tmp_path / "film.png"
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(path)
    assert cached_sources([("abc", path)], tmp_path) == [FilmSource("PNG", 30, 20, 8)]
    path.unlink()  # the memo answers now
    assert cached_sources([("abc", path), ("def", path)], tmp_path) == [FilmSource("PNG", 30, 20, 8), FilmSource()]
