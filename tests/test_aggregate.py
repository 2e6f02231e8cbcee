"""Aggregation of fold runs: statistics checked by hand, refusal of missing folds and double predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pneumollm.analysis.collect import check_complete, collect_runs
from pneumollm.analysis.summary import pooled_auc, summarise_arm
from pneumollm.cli.aggregate import main as aggregate_main

AVG = {0: 70.0, 1: 80.0, 2: 90.0}


def _fake_run(root: Path, arm: str, fold: int, preds: list[tuple[str, str, int, float]]) -> None:
    run = root / arm / f"fold{fold}"
    run.mkdir(parents=True)
    metrics = {f"test/{m}": AVG[fold] for m in ("sensitivity", "specificity", "accuracy", "auc", "avg")}
    (run / "metrics.json").write_text(json.dumps({**metrics, "fold": fold, "arm": arm, "trainable_params": 10}))
    with (run / "predictions.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["image_id", "patient_id", "fold", "label", "prob"])
        out.writerows([(img, pat, fold, label, prob) for img, pat, label, prob in preds])


def _three_folds(root: Path) -> None:
    _fake_run(root, "arm", 0, [("a", "A", 1, 0.9), ("b", "B", 0, 0.4)])
    _fake_run(root, "arm", 1, [("c", "C", 1, 0.3), ("d", "D", 0, 0.2)])
    _fake_run(root, "arm", 2, [("e", "E", 1, 0.6), ("f", "F", 0, 0.7)])


def test_mean_std_and_pooled_auc_match_hand_computation(tmp_path: Path) -> None:
    _three_folds(tmp_path)
    summary = summarise_arm(collect_runs(tmp_path)["arm"])
    assert summary.mean["avg"] == pytest.approx(80.0)
    assert summary.std["avg"] == pytest.approx(10.0)  # sample std of 70, 80, 90 (ddof=1)
    # pooled: positives 0.9, 0.3, 0.6 vs negatives 0.4, 0.2, 0.7 -> 6 of 9 pairs ordered correctly
    assert summary.pooled_auc == pytest.approx(100 * 6 / 9)


def test_pooled_auc_counts_ties_as_half() -> None:
    import numpy as np

    assert pooled_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(50.0)


def test_a_missing_fold_is_refused_with_its_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _three_folds(tmp_path)
    assert aggregate_main([str(tmp_path), "--num-folds", "4"]) == 2
    assert "arm 'arm' fold 3 is missing" in capsys.readouterr().out
    assert not (tmp_path / "summary.csv").exists()
    assert aggregate_main([str(tmp_path), "--num-folds", "3"]) == 0
    assert (tmp_path / "summary.csv").is_file() and (tmp_path / "summary.md").is_file()


def test_a_film_predicted_twice_is_refused(tmp_path: Path) -> None:
    _three_folds(tmp_path)
    _fake_run(tmp_path, "other", 0, [("a", "A", 1, 0.9)])
    _fake_run(tmp_path, "other", 1, [("a", "A", 1, 0.8)])
    problems = check_complete(collect_runs(tmp_path)["other"], num_folds=2)
    assert any("film 'a' is predicted in fold 0 and fold 1" in p for p in problems)
    assert any("patient 'A' is tested in folds 0 and 1" in p for p in problems)


def test_failed_folds_are_named(tmp_path: Path) -> None:
    _three_folds(tmp_path)
    failed = tmp_path / "arm" / "fold3"
    failed.mkdir()
    (failed / "failed.json").write_text(json.dumps({"arm": "arm", "fold": 3, "error": "RuntimeError: boom"}))
    problems = check_complete(collect_runs(tmp_path)["arm"], num_folds=4)
    assert problems == ["arm 'arm' fold 3 is missing (failed: RuntimeError: boom)"]
