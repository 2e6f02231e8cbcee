"""What the console says about a prepared cohort: counts by reason, and one error naming the fix when no film
can be used."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pneumollm.data.cohort import Skipped, read_manifest
from pneumollm.data.cohort_report import count_reasons, no_usable_films, summary_lines
from pneumollm.data.lungs.base import NoSegmenter
from pneumollm.data.preprocess import PreparedCohort, PreprocessSettings, prepare_cohort
from tests.helpers import write_cohort


def test_small_films_are_counted_as_one_reason_and_the_setting_that_admits_them_is_named(tmp_path: Path) -> None:
    films = [(f"films/f{k}.png", np.full((h, w), 90, np.uint8), (f"P{k}", k % 2))
             for k, (w, h) in enumerate([(40, 50), (48, 30), (60, 60)])]
    write_cohort(tmp_path, [*films, ("films/gone.png", None, ("P9", 1))], manifest="m.csv")  # gone: never written
    listing = read_manifest(tmp_path / "m.csv")
    cohort = prepare_cohort(listing, tmp_path / "prepared", PreprocessSettings(image_size=32, min_size=64),
                            NoSegmenter, workers=1, progress=False)
    assert cohort.films == [] and len(cohort.skipped) == 4
    assert count_reasons(cohort.skipped) == ("3x smaller than the 64-pixel minimum (data.min_film_size); "
                                             "1x file not found")
    message = str(no_usable_films(cohort.skipped, str(tmp_path / "m.csv"), cohort.report_csv, tmp_path / "m.csv"))
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'm.csv'}: no usable film, all 4 skipped (3x smaller than the 64-pixel "
                              "minimum (data.min_film_size); 1x file not found)")
    assert "data.min_film_size=30 admits the small films (the smallest is 48x30 pixels)" in message
    assert f"paths are read relative to the folder of m.csv ({tmp_path}): {tmp_path / 'films/gone.png'}" in message
    assert message.endswith(f"every film's reason: {cohort.report_csv}")


def test_the_summary_of_a_cohort_without_films_has_no_crop_line(tmp_path: Path) -> None:
    cohort = PreparedCohort(tmp_path, [], [Skipped("a.png", "/x/a.png", "film is 10x12 pixels, smaller than the "
                                                   "64-pixel minimum")])
    lines = summary_lines(cohort)
    assert not any(line.startswith("crop:") for line in lines)
    assert "1 skipped: 1x smaller than the 64-pixel minimum (data.min_film_size)" in lines
