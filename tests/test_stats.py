"""The table statistics against hand-computed values on fixed toy inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pneumollm.analysis.report import aggregate_table
from pneumollm.analysis.stats import bootstrap_auc_by_patient, mean_std, paired_difference
from pneumollm.analysis.tables import CSV_COLUMNS
from tests.test_aggregate import _fake_run


def test_paired_difference_is_the_mean_fold_difference_with_a_t_interval() -> None:
    # differences 10, 5, 10: mean 8.333, sample sd 2.8868, t(0.975, 2 df) = 4.302653
    interval = paired_difference([70, 80, 90], [60, 75, 80])
    half = 4.302653 * 2.886751 / np.sqrt(3)
    assert interval.estimate == pytest.approx(25 / 3)
    assert interval.low == pytest.approx(25 / 3 - half, abs=1e-4)
    assert interval.high == pytest.approx(25 / 3 + half, abs=1e-4)


def test_identical_arms_differ_by_exactly_zero() -> None:
    interval = paired_difference([70, 80, 90], [70, 80, 90])
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)


def test_bootstrap_of_a_perfect_ranking_stays_at_100() -> None:
    labels = [0, 0, 1, 1, 0, 1]
    probs = [0.1, 0.2, 0.8, 0.9, 0.3, 0.7]
    interval = bootstrap_auc_by_patient(labels, probs, ["a", "b", "c", "d", "e", "f"], n_boot=200)
    assert (interval.estimate, interval.low, interval.high) == (100.0, 100.0, 100.0)


def test_bootstrap_resamples_patients_not_films() -> None:
    # patient p1 has two films ranked wrongly, the others are ranked right: a resample either keeps both of
    # p1's films or neither, so every resampled AUC comes from whole patients.
    labels = [1, 1, 0, 0, 1, 0]
    probs = [0.2, 0.25, 0.3, 0.1, 0.9, 0.05]
    patients = ["p1", "p1", "p2", "p3", "p4", "p5"]
    interval = bootstrap_auc_by_patient(labels, probs, patients, n_boot=500, seed=1)
    assert interval.estimate == pytest.approx(100 * 7 / 9)  # 7 of 9 positive/negative pairs ordered right
    assert interval.low < interval.estimate < interval.high <= 100.0
    again = bootstrap_auc_by_patient(labels, probs, patients, n_boot=500, seed=1)
    assert again == interval  # seeded


def test_table_rows_carry_our_numbers_the_papers_and_paired_differences(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for arm, offset in (("baseline", 0.0), ("pneumollm", 5.0)):
        for fold in range(3):
            _fake_run(runs, arm, fold, [(f"{arm}{fold}a", f"P{fold}a", 1, 0.9), (f"{arm}{fold}b", f"P{fold}b", 0, 0.2)])
            path = runs / arm / f"fold{fold}" / "metrics.json"
            metrics = json.loads(path.read_text())
            metrics.update({k: v + offset for k, v in metrics.items() if k.startswith("test/")})
            path.write_text(json.dumps(metrics))
    report = aggregate_table(runs, tmp_path, "table6", reference="baseline", num_folds=3, n_boot=100,
                             use_wandb=False)
    from pneumollm.analysis.tables import COLUMNS

    rows = {cells[0]: dict(zip(COLUMNS, cells)) for cells in report.cells}
    assert rows["pneumollm"]["ΔAVG [95% CI]"] == "5.00 [5.00, 5.00]"  # ΔAVG: +5 in every fold
    assert rows["pneumollm"]["paper AVG"] == "75.76"  # the paper's AVG for +Adapter+CMTE+Emitter
    assert rows["pneumollm"]["full-size L-para (M)"] == "2.704"  # the paper's configuration, on the meta device
    assert rows["baseline"]["full-size L-para (M)"] == "0.6678"  # Table 6 baseline at full size: 667,776
    assert rows["baseline"]["ΔAVG [95% CI]"] == "ref"
    assert (tmp_path / "roc.png").is_file() and (tmp_path / "table.csv").is_file()
    assert "paper AVG" in (tmp_path / "table.md").read_text()


def test_a_figure_without_paper_numbers_leaves_the_paper_columns_out_of_the_markdown(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for arm in ("m1", "m2"):
        for fold in range(3):
            _fake_run(runs, arm, fold, [(f"{arm}{fold}a", f"P{fold}a", 1, 0.8), (f"{arm}{fold}b", f"P{fold}b", 0, 0.3)])
    report = aggregate_table(runs, tmp_path, "fig6b", num_folds=3, n_boot=50, use_wandb=False)
    markdown = (tmp_path / "table.md").read_text()
    assert not report.has_paper
    assert "paper AUC" not in markdown and "plot only" in markdown
    header = (tmp_path / "table.csv").read_text().splitlines()[0].split(",")
    assert "paper_auc" in header and header == list(CSV_COLUMNS)  # the csv keeps one schema


def test_the_rank_auc_equals_scikit_learns_with_ties() -> None:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from pneumollm.analysis.stats import rank_auc

    rng = np.random.default_rng(3)
    for _ in range(20):
        labels = rng.integers(0, 2, 50)
        labels[:2] = [0, 1]
        probs = np.round(rng.random(50), 1)  # many ties
        assert rank_auc(labels, probs) == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)


def test_mean_std_over_folds_leaves_out_folds_without_the_figure() -> None:
    assert mean_std([0.2, float("nan"), 0.4]) == pytest.approx((0.3, 0.1414213562373095))
    mean, std = mean_std([0.5, float("nan")])
    assert mean == 0.5 and np.isnan(std)  # one fold: no spread
    assert all(np.isnan(x) for x in mean_std([float("nan")] * 3))
