"""The preprocessing stage: cache keyed by content and settings, bad files skipped and reported."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pneumollm.data.preprocess as preprocess
from pneumollm.data.cohort import read_manifest
from pneumollm.data.lungs.base import NoSegmenter
from pneumollm.data.preprocess import PreprocessSettings, prepare_cohort, read_cohort_index
from tests.helpers import make_toy_manifest, write_cohort

TOY_SIZE = 64  # the smallest film the default settings accept (PreprocessSettings.min_size)


def _prepare(manifest: Path, out: Path, **settings):
    return prepare_cohort(read_manifest(manifest), out, PreprocessSettings(image_size=32, lungs={"name": "none"},
                                                                          **settings),
                          NoSegmenter, workers=1, progress=False)


def test_films_are_resized_and_indexed(tmp_path: Path) -> None:
    cohort = _prepare(make_toy_manifest(tmp_path / "c", n_patients=6, size=TOY_SIZE), tmp_path / "prep")
    films = read_cohort_index(cohort.folder)
    assert len(films) == 6 and cohort.decoded == 6
    with Image.open(cohort.folder / films[0].file) as img:
        assert img.size == (32, 32) and img.mode == "L"


def test_second_run_hits_the_cache_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = make_toy_manifest(tmp_path / "c", n_patients=6, size=TOY_SIZE)
    first = _prepare(manifest, tmp_path / "prep")

    def no_decoding(*args, **kwargs):
        raise AssertionError("the decoder must not run on a cache hit")

    monkeypatch.setattr(preprocess, "decode_film", no_decoding)
    second = _prepare(manifest, tmp_path / "prep")
    assert second.decoded == 0 and [f.content_hash for f in second.films] == [f.content_hash for f in first.films]
    monkeypatch.undo()
    changed = _prepare(manifest, tmp_path / "prep", margin=0.3)  # other settings: a separate cache
    assert changed.folder != first.folder and changed.decoded == 6


def test_a_corrupt_file_is_skipped_reported_and_counted(tmp_path: Path) -> None:
    manifest = make_toy_manifest(tmp_path / "c", n_patients=6, size=TOY_SIZE)
    (tmp_path / "c/films/p003_0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cohort = _prepare(manifest, tmp_path / "prep")
    assert len(cohort.films) == 5
    with cohort.report_csv.open() as handle:
        rows = {r["image_id"]: r for r in csv.DictReader(handle)}
    assert rows["films/p003_0.png"]["status"] == "skipped"
    assert "not a readable image" in rows["films/p003_0.png"]["reason"]
    assert any("1 skipped" in line for line in cohort.summary_lines())


def test_identical_films_under_two_names_are_not_both_used(tmp_path: Path) -> None:
    manifest = make_toy_manifest(tmp_path / "c", n_patients=4, size=TOY_SIZE)
    (tmp_path / "c/films/copy.png").write_bytes((tmp_path / "c/films/p000_0.png").read_bytes())
    manifest.write_text(manifest.read_text() + "films/copy.png,P999,pneumoconiosis\n")
    cohort = _prepare(manifest, tmp_path / "prep")
    assert [s.reason for s in cohort.skipped] == ["identical content to films/p000_0.png (duplicate film)"]


def test_parallel_workers_give_the_same_films(tmp_path: Path) -> None:
    manifest = make_toy_manifest(tmp_path / "c", n_patients=8, size=TOY_SIZE)
    serial = _prepare(manifest, tmp_path / "a")
    parallel = prepare_cohort(read_manifest(manifest), tmp_path / "b",
                              PreprocessSettings(image_size=32, lungs={"name": "none"}), NoSegmenter, workers=2,
                              progress=False)
    for a, b in zip(serial.films, parallel.films):
        left = np.asarray(Image.open(serial.folder / a.file))
        right = np.asarray(Image.open(parallel.folder / b.file))
        np.testing.assert_array_equal(left, right)


def test_a_known_bad_file_is_reported_again_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = make_toy_manifest(tmp_path / "c", n_patients=4, size=TOY_SIZE)
    (tmp_path / "c/films/p001_0.png").write_bytes(b"not an image at all")
    first = _prepare(manifest, tmp_path / "prep")

    def no_decoding(*args, **kwargs):
        raise AssertionError("the decoder must not run again")

    monkeypatch.setattr(preprocess, "decode_film", no_decoding)
    second = _prepare(manifest, tmp_path / "prep")
    assert [s.reason for s in second.skipped] == [s.reason for s in first.skipped]
    assert "not a readable image" in second.skipped[0].reason


def test_films_below_the_minimum_size_are_skipped_naming_their_size(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = {"tall.png": (500, 40), "short.png": (63, 200), "square.png": (64, 64), "big.png": (80, 120)}  # (h, w)
    films = [(f"films/{name}", np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8), (f"P{i}", i % 2))
             for i, (name, shape) in enumerate(sizes.items())]
    manifest = write_cohort(tmp_path / "c", films)
    cohort = _prepare(manifest, tmp_path / "prep")
    assert sorted(f.image_id for f in cohort.films) == ["films/big.png", "films/square.png"]
    assert {s.image_id: s.reason for s in cohort.skipped} == {
        "films/tall.png": "film is 40x500 pixels, smaller than the 64-pixel minimum",
        "films/short.png": "film is 200x63 pixels, smaller than the 64-pixel minimum",
    }

    def no_decoding(*args, **kwargs):
        raise AssertionError("a film below the minimum is cached as a failure and not decoded again")

    monkeypatch.setattr(preprocess, "decode_film", no_decoding)
    again = _prepare(manifest, tmp_path / "prep")
    assert [s.reason for s in again.skipped] == [s.reason for s in cohort.skipped]
    monkeypatch.undo()
    lower = _prepare(manifest, tmp_path / "prep", min_size=40)  # a setting of its own: a separate cache
    assert lower.folder != cohort.folder and len(lower.films) == 4 and not lower.skipped
