"""The decision threshold: Youden's J on the validation patients, recorded in every run, used on request, never
chosen on the test fold."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pneumollm.errors import ConfigError
from pneumollm.training import thresholds as thresholds_module
from pneumollm.training.run import run_fold
from pneumollm.training.thresholds import threshold_mode, youden_threshold
from tests.helpers import compose_train
from tests.test_training import TOY


def test_youden_splits_separable_scores_and_calls_with_greater_than() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.6, 0.9])
    t = youden_threshold(labels, probs)
    assert 0.3 < t < 0.6 and ((probs > t) == labels.astype(bool)).all()
    tied = youden_threshold(np.array([0, 1, 1]), np.array([0.2, 0.5, 0.5]))
    assert 0.2 < tied < 0.5  # calls prob > t: both tied positives stay positive
    assert youden_threshold(np.array([1, 1]), np.array([0.3, 0.4])) is None


def test_threshold_settings_are_checked() -> None:
    assert threshold_mode(0.5) == ("fixed", 0.5) and threshold_mode("validation") == ("validation", 0.5)
    with pytest.raises(ConfigError, match="must lie in"):
        threshold_mode(1.5)
    with pytest.raises(ConfigError, match="give a number"):
        threshold_mode("youden")


@pytest.fixture(scope="module")
def manifest(toy_cohort) -> Path:
    return toy_cohort(n_patients=24, films_per_patient=1, size=40)


def _cfg(manifest: Path, root: Path, *extra: str):
    return compose_train([*TOY, f"data.source.manifest={manifest}", f"paths.root_dir={root}",
                          "trainer.max_epochs=2", *extra], run_dir=root / "run")


def test_the_validation_threshold_comes_from_validation_films_and_drives_the_test(manifest: Path, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    seen: list[int] = []
    original = thresholds_module.youden_threshold

    def spy(labels, probs):
        seen.append(len(labels))
        return original(labels, probs)

    monkeypatch.setattr(thresholds_module, "youden_threshold", spy)
    metrics = run_fold(_cfg(manifest, tmp_path, "threshold=validation"))
    assert seen == [metrics["splits"]["val"]["films"]] != [metrics["splits"]["test"]["films"]]
    assert metrics["threshold_mode"] == "validation" and metrics["threshold"] == metrics["threshold_validation"]
    with (tmp_path / "run/predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    calls = [float(r["prob"]) > metrics["threshold"] for r in rows]
    assert [r["pred"] == "1" for r in rows] == calls
    correct = sum(c == (r["label"] == "1") for c, r in zip(calls, rows))
    assert metrics["test/accuracy"] == pytest.approx(100 * correct / len(rows), abs=1e-3)


def test_a_fixed_threshold_run_still_records_the_validation_one(manifest: Path, tmp_path: Path) -> None:
    metrics = run_fold(_cfg(manifest, tmp_path))
    assert metrics["threshold_mode"] == "fixed" and metrics["threshold"] == 0.5
    assert metrics["threshold_validation"] is not None and 0 < metrics["threshold_validation"] < 1


def test_a_validation_threshold_is_refused_when_validation_is_the_test_fold(manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="threshold=validation needs validation patients"):
        run_fold(_cfg(manifest, tmp_path, "threshold=validation", "data.selection_split=test_fold_reference"))
