"""Aggregation of fold runs: statistics checked by hand, refusal of missing folds and double predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pneumollm.analysis.collect import AggregationError, check_complete, collect_runs, find_studies
from pneumollm.analysis.summary import pooled_auc, summarise_arm
from pneumollm.cli.aggregate import main as aggregate_main
from pneumollm.training.fold_metrics import FoldMetrics
from pneumollm.training.run_folder import RunFolder

AVG = {0: 70.0, 1: 80.0, 2: 90.0}


def _fake_run(root: Path, arm: str, fold: int, preds: list[tuple[str, str, int, float]],
              cohort: dict | None = None) -> Path:
    """A finished run folder as the fold runner leaves it (job.json and metrics.json of one config hash)."""
    run = root / arm / f"fold{fold}"
    run.mkdir(parents=True)
    figures = {m: AVG[fold] for m in ("sensitivity", "specificity", "accuracy", "auc", "avg")}
    chash = f"hash-{arm}-{fold}"
    cohort = cohort or {"films": "F1", "folds": "K1"}
    (run / "job.json").write_text(json.dumps({"config_hash": chash}))
    RunFolder(run).write_metrics(FoldMetrics(fold=fold, arm=arm, test=figures, trainable_params=10, config_hash=chash,
                                             cohort=cohort))
    with (run / "predictions.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["image_id", "patient_id", "fold", "label", "prob"])
        out.writerows([(img, pat, fold, label, prob) for img, pat, label, prob in preds])
    return run


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
    assert problems == [f"arm 'arm' fold 3 is missing (failed: RuntimeError: boom ({failed}))"]


def test_runs_of_different_cohorts_in_one_study_are_refused_naming_them(tmp_path: Path) -> None:
    _three_folds(tmp_path)
    _fake_run(tmp_path, "other", 0, [("x", "X", 1, 0.9)], cohort={"films": "F2", "folds": "K1"})
    with pytest.raises(AggregationError, match=r"different cohorts or folds") as refused:
        collect_runs(tmp_path)
    assert "other/fold0" in str(refused.value) and "arm/fold0" in str(refused.value)


def test_runs_of_different_folds_files_are_refused(tmp_path: Path) -> None:
    _fake_run(tmp_path, "arm", 0, [("a", "A", 1, 0.9)])
    _fake_run(tmp_path, "arm", 1, [("b", "B", 0, 0.1)], cohort={"films": "F1", "folds": "K2"})
    with pytest.raises(AggregationError, match="arm/fold1"):
        collect_runs(tmp_path)


def test_debug_runs_and_set_aside_outputs_never_count(tmp_path: Path) -> None:
    _three_folds(tmp_path)
    debug = _fake_run(tmp_path, "debugged", 0, [("z", "Z", 1, 0.5)])
    info = json.loads((debug / "metrics.json").read_text())
    (debug / "metrics.json").write_text(json.dumps({**info, "debug": "fdr"}))
    old = tmp_path / "arm" / "fold0" / ".superseded" / "abc-1"
    old.mkdir(parents=True)
    (old / "metrics.json").write_text((tmp_path / "arm" / "fold0" / "metrics.json").read_text())
    arms = collect_runs(tmp_path)
    assert set(arms) == {"arm"} and sorted(arms["arm"].folds) == [0, 1, 2]


def test_a_folder_of_studies_is_aggregated_study_by_study(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for cohort in ("demo", "mine-1234abcd"):
        _three_folds(tmp_path / "table6" / cohort / "runs")
    assert [p.name for p in find_studies(tmp_path / "table6")] == ["demo", "mine-1234abcd"]
    assert aggregate_main([str(tmp_path / "table6"), "--num-folds", "3"]) == 0
    for cohort in ("demo", "mine-1234abcd"):
        assert (tmp_path / "table6" / cohort / "summary.md").is_file()


def test_a_failed_aggregation_leaves_the_previous_outputs_whole(tmp_path: Path, monkeypatch) -> None:
    from pneumollm.analysis import report

    _three_folds(tmp_path)
    assert aggregate_main([str(tmp_path), "--num-folds", "3", "--table", "table6", "--no-wandb",
                           "--bootstrap", "50"]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {"summary.md", "summary.csv", "table.md", "table.csv", "roc.png"} <= set(before)
    _fake_run(tmp_path, "second", 0, [("g", "G", 1, 0.9), ("h", "H", 0, 0.1)])
    _fake_run(tmp_path, "second", 1, [("i", "I", 1, 0.8), ("j", "J", 0, 0.2)])
    _fake_run(tmp_path, "second", 2, [("k", "K", 1, 0.7), ("l", "L", 0, 0.3)])

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(report, "plot_roc", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        aggregate_main([str(tmp_path), "--num-folds", "3", "--table", "table6", "--no-wandb", "--bootstrap", "50"])
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # the summary written before the failing figure was not put in place
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")]


def test_summary_csv_leaves_a_std_over_one_fold_empty(tmp_path: Path) -> None:
    _fake_run(tmp_path, "arm", 0, [("a", "A", 1, 0.9), ("b", "B", 0, 0.4)])
    assert aggregate_main([str(tmp_path), "--num-folds", "1"]) == 0
    with (tmp_path / "summary.csv").open(newline="") as handle:
        rows = {r["fold"]: r for r in csv.DictReader(handle)}
    assert rows["std"]["avg"] == "" and float(rows["mean"]["avg"]) == 70.0  # no "nan" among the numbers
    assert float(rows["mean"]["pooled_auc"]) == 100.0


def test_summary_lists_the_arms_in_the_tables_order(tmp_path: Path) -> None:
    from tests.test_tables_csv import fake_table6

    fake_table6(tmp_path / "runs", {"pneumollm": 5.0, "adapter": 2.0, "baseline": 0.0})  # found alphabetically
    assert aggregate_main([str(tmp_path / "runs"), "--num-folds", "3", "--table", "table6", "--no-wandb",
                           "--bootstrap", "50", "--out", str(tmp_path)]) == 0

    def arms(name: str) -> list[str]:
        with (tmp_path / name).open(newline="") as handle:
            return list(dict.fromkeys(r["arm"] for r in csv.DictReader(handle)))

    assert arms("summary.csv") == arms("table.csv") == ["baseline", "adapter", "pneumollm"]


def test_an_unchanged_study_keeps_its_outputs_and_a_changed_run_remakes_them(tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    _three_folds(tmp_path)
    args = [str(tmp_path), "--num-folds", "3", "--table", "table6", "--no-wandb", "--bootstrap", "50"]
    assert aggregate_main(args) == 0
    stamp = (tmp_path / "table.md").stat().st_mtime_ns
    first = capsys.readouterr().out
    assert aggregate_main(args) == 0
    again = capsys.readouterr().out
    assert "unchanged since the last aggregation" in again and (tmp_path / "table.md").stat().st_mtime_ns == stamp
    assert first.split("written:")[0] == again.split("kept:")[0]  # the same summary on the console
    assert "written:" not in again and "kept:" not in first  # kept or written, never both
    assert aggregate_main([*args, "--bootstrap", "60"]) == 0  # another option: remade
    assert (tmp_path / "table.md").stat().st_mtime_ns != stamp
    stamp = (tmp_path / "table.md").stat().st_mtime_ns
    predictions = tmp_path / "arm" / "fold1" / "predictions.csv"
    predictions.write_text(predictions.read_text().replace("0.3", "0.35"))
    assert aggregate_main([*args, "--bootstrap", "60"]) == 0
    assert "unchanged since the last" not in capsys.readouterr().out
    assert (tmp_path / "table.md").stat().st_mtime_ns != stamp


def test_a_cohort_column_is_carried_into_predictions_and_splits_the_results(tmp_path: Path) -> None:
    sites = {"a": "north", "b": "south", "c": "north", "d": "south", "e": "north", "f": "south"}
    _three_folds(tmp_path)
    for fold in range(3):
        predictions = tmp_path / "arm" / f"fold{fold}" / "predictions.csv"
        rows = list(csv.DictReader(predictions.open()))
        with predictions.open("w", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=[*rows[0], "site"])
            out.writeheader()
            out.writerows({**r, "site": sites[r["image_id"]]} for r in rows)
    assert aggregate_main([str(tmp_path), "--num-folds", "3", "--by", "site", "--bootstrap", "50"]) == 0
    with (tmp_path / "by_site.csv").open() as handle:
        rows = {r["value"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"north", "south"} and rows["north"]["films"] == "3"
    # north holds a, c, e: all positive (0.9, 0.3, 0.6), so no specificity and no AUC; 2 of 3 called at 0.5
    assert rows["north"]["pooled_auc"] == "" and rows["north"]["specificity"] == ""
    assert float(rows["north"]["sensitivity"]) == pytest.approx(200 / 3)
    # south holds b, d, f: all negative (0.4, 0.2, 0.7)
    assert rows["south"]["sensitivity"] == "" and float(rows["south"]["specificity"]) == pytest.approx(200 / 3)
    assert aggregate_main([str(tmp_path), "--num-folds", "3", "--by", "scanner"]) == 2
