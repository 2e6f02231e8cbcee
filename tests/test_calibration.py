"""Calibration (Brier, ECE, slope, intercept) and decision curves: the definitions checked against direct
computations, on perfectly and badly calibrated synthetic predictions, through summaries, tables and figures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit
from sklearn.calibration import calibration_curve

from pneumollm.analysis.calibration import (
    TABLE_COLUMNS,
    calibration_by_patient,
    fast_slope,
    resample_figures,
    summarise_calibration,
)
from pneumollm.analysis.calibration_figures import calibration_figure, decision_figure
from pneumollm.analysis.collect import collect_runs
from pneumollm.analysis.decision_curve import THRESHOLDS, decision_curves, net_benefit, treat_all
from pneumollm.analysis.report import aggregate_table
from pneumollm.analysis.summary import summarise_arm
from pneumollm.cli.aggregate import main as aggregate_main
from pneumollm.training.calibration_metrics import CALIBRATION_METRICS, calibration_metrics, log_odds
from pneumollm.training.prediction_metrics import binary_metrics, prediction_metrics
from tests.test_aggregate import _fake_run


def _synthetic(n: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probs, log-odds): labels drawn as Bernoulli(expit(z)), the predictions expit(scale·z + shift)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-0.3, 1.5, n)
    labels = (rng.random(n) < expit(z)).astype(int)
    predicted = scale * z + shift
    return labels, expit(predicted), predicted


def by_hand(labels: np.ndarray, probs: np.ndarray, z: np.ndarray) -> dict[str, float]:
    """The four figures written out directly: the Brier mean, ECE from scikit-learn's calibration_curve and the
    bins' counts, slope and intercept by maximising the log-likelihoods with scipy's general optimisers."""
    brier = float(np.mean((probs - labels) ** 2))
    observed, predicted = calibration_curve(labels, probs, n_bins=10, strategy="uniform")
    bins = pd.Series(pd.cut(probs, np.linspace(0, 1, 11), right=True, include_lowest=True))
    counts = bins.value_counts(sort=False).to_numpy()
    counts = counts[counts > 0]
    ece = float(np.sum(counts * np.abs(observed - predicted)) / len(probs))

    def joint(beta: np.ndarray) -> float:
        eta = beta[0] + beta[1] * z
        return float(np.sum(np.logaddexp(0, eta) - labels * eta))

    slope = minimize(joint, np.array([0.0, 1.0]), method="BFGS", options={"gtol": 1e-10}).x[1]
    offset = minimize_scalar(lambda a: float(np.sum(np.logaddexp(0, a + z) - labels * (a + z))),
                             bounds=(-20, 20), method="bounded", options={"xatol": 1e-12}).x
    return {"brier": brier, "ece": ece, "calibration_slope": float(slope), "calibration_intercept": float(offset)}


def test_the_figures_equal_their_direct_computation() -> None:
    for seed, scale, shift in ((0, 1.0, 0.0), (1, 2.5, -0.4), (2, 0.5, 0.8)):
        labels, probs, z = _synthetic(400, seed, scale, shift)
        ours, expected = calibration_metrics(labels, probs, z), by_hand(labels, probs, z)
        assert ours["brier"] == pytest.approx(expected["brier"], rel=1e-12)
        assert ours["ece"] == pytest.approx(expected["ece"], rel=1e-12)
        assert ours["calibration_slope"] == pytest.approx(expected["calibration_slope"], abs=1e-5)
        assert ours["calibration_intercept"] == pytest.approx(expected["calibration_intercept"], abs=1e-6)
        # the bootstrap's fast form gives the same figures
        fast = resample_figures(labels, probs, z)
        for metric in CALIBRATION_METRICS:
            assert fast[metric] == pytest.approx(ours[metric], rel=1e-6, abs=1e-9), metric
        assert fast_slope(labels, z) == pytest.approx(ours["calibration_slope"], abs=1e-6)


def test_perfectly_calibrated_predictions() -> None:
    labels, probs, z = _synthetic(6000, 3)
    figures = calibration_metrics(labels, probs, z)
    assert figures["calibration_slope"] == pytest.approx(1.0, abs=0.08)
    assert figures["calibration_intercept"] == pytest.approx(0.0, abs=0.08)
    assert figures["ece"] < 0.03
    assert figures["brier"] == pytest.approx(np.mean(probs * (1 - probs)), abs=0.01)
    pooled, curve = calibration_by_patient(labels, probs, z, [f"p{i // 2}" for i in range(len(labels))], n_boot=200)
    assert pooled["calibration_slope"].low < 1 < pooled["calibration_slope"].high
    assert pooled["calibration_intercept"].low < 0 < pooled["calibration_intercept"].high
    filled = curve.counts > 20
    assert np.all(np.abs(curve.observed[filled] - curve.predicted[filled]) < 0.06)  # near the diagonal
    assert np.all(curve.low[filled] <= curve.observed[filled]) and np.all(curve.observed[filled] <= curve.high[filled])


def test_overconfident_and_shifted_predictions() -> None:
    labels, probs, z = _synthetic(6000, 4, scale=3.0)  # log-odds three times too extreme
    overconfident = calibration_metrics(labels, probs, z)
    assert overconfident["calibration_slope"] == pytest.approx(1 / 3, abs=0.03)
    assert overconfident["ece"] > 0.08
    labels, probs, z = _synthetic(6000, 5, shift=1.0)  # every prediction too high by one log-odds unit
    too_high = calibration_metrics(labels, probs, z)
    assert too_high["calibration_intercept"] == pytest.approx(-1.0, abs=0.1)
    assert too_high["calibration_slope"] == pytest.approx(1.0, abs=0.08)
    assert calibration_metrics(*_synthetic(6000, 5, shift=-1.0)[:2])["calibration_intercept"] > 0.85  # too low


def test_separated_classes_have_no_slope_and_one_class_no_recalibration() -> None:
    separated = calibration_metrics([0, 0, 1, 1], [0.1, 0.3, 0.3, 0.9])  # every positive at or above every negative
    assert np.isnan(separated["calibration_slope"]) and np.isfinite(separated["calibration_intercept"])
    one_class = calibration_metrics([1, 1, 1], [0.2, 0.6, 0.9])
    assert np.isnan(one_class["calibration_slope"]) and np.isnan(one_class["calibration_intercept"])
    assert one_class["brier"] == pytest.approx(np.mean([0.8 ** 2, 0.4 ** 2, 0.1 ** 2]))
    assert all(np.isnan(v) for v in calibration_metrics([], []).values())


def test_the_stored_logit_is_used_else_the_clipped_probability() -> None:
    z = log_odds([1.0, 1.0, 0.25, 0.0], [40.0, None, float("nan"), None])
    assert z[0] == 40.0  # a saturated probability keeps its stored log-odds
    assert z[1] == pytest.approx(np.log((1 - 1e-6) / 1e-6)) and z[3] == pytest.approx(-z[1])  # clipped
    assert z[2] == pytest.approx(np.log(1 / 3))
    labels = np.array([0, 1, 0, 1, 1, 0])
    probs = np.array([0.2, 0.7, 0.65, 0.6, 0.9, 0.5])
    stored = log_odds(probs) * 2  # a run whose logits are not those of prob (the figures follow the stored ones)
    assert calibration_metrics(labels, probs, stored)["calibration_slope"] == pytest.approx(
        calibration_metrics(labels, probs)["calibration_slope"] / 2, rel=1e-6)
    fold = prediction_metrics(labels, probs, 0.5, logits=stored)  # the function metrics.json comes from
    assert set(CALIBRATION_METRICS) <= set(fold) and fold["brier"] == pytest.approx(np.mean((probs - labels) ** 2))


def test_the_intervals_resample_patients_not_films() -> None:
    labels, probs, z = _synthetic(300, 6, scale=1.5)
    single = calibration_by_patient(labels, probs, z, [f"p{i}" for i in range(300)], n_boot=150, seed=2)[0]
    four = np.repeat(np.arange(300), 4)  # every patient with four identical films: the same figures per resample
    grouped = calibration_by_patient(labels[four], probs[four], z[four], [f"p{i}" for i in four], n_boot=150,
                                     seed=2)[0]
    for metric in CALIBRATION_METRICS:
        assert grouped[metric].low == pytest.approx(single[metric].low, rel=1e-6), metric
        assert grouped[metric].high == pytest.approx(single[metric].high, rel=1e-6), metric
    as_films = calibration_by_patient(labels[four], probs[four], z[four], [f"f{i}" for i in range(1200)],
                                      n_boot=150, seed=2)[0]
    width = {k: v.high - v.low for k, v in grouped.items()}
    assert as_films["brier"].high - as_films["brier"].low < 0.7 * width["brier"]  # film resampling: too narrow


# --- decision curves ------------------------------------------------------------------------------------------


def test_net_benefit_equals_its_direct_computation() -> None:
    labels, probs, _ = _synthetic(500, 7)
    nb = net_benefit(labels, probs)
    assert THRESHOLDS[0] == 0.01 and THRESHOLDS[-1] == 0.99 and len(THRESHOLDS) == 99
    for k in (0, 9, 49, 80, 98):
        pt = THRESHOLDS[k]
        referred = probs > pt
        tp, fp = np.sum(referred & (labels == 1)), np.sum(referred & (labels == 0))
        assert nb[k] == pytest.approx(tp / len(labels) - fp / len(labels) * pt / (1 - pt), rel=1e-12)
        at_cut = binary_metrics(labels, probs, pt)  # the suite's calls at the same cut-off
        prevalence = labels.mean()
        assert nb[k] == pytest.approx(at_cut["sensitivity"] / 100 * prevalence - (1 - at_cut["specificity"] / 100)
                                      * (1 - prevalence) * pt / (1 - pt), rel=1e-9)


def test_treat_all_treat_none_and_a_perfect_classifier() -> None:
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0])  # prevalence 0.3
    everyone = treat_all(labels)
    assert everyone == pytest.approx(0.3 - 0.7 * THRESHOLDS / (1 - THRESHOLDS))
    assert net_benefit(labels, np.ones(10)) == pytest.approx(everyone)  # referring every film is treat all
    assert np.all(net_benefit(labels, np.zeros(10)) == 0)  # referring none
    assert net_benefit(labels, labels.astype(float)) == pytest.approx(np.full(99, 0.3))  # perfect: the prevalence
    assert everyone[np.argmin(np.abs(THRESHOLDS - 0.3))] == pytest.approx(0.0)  # treat all crosses 0 at pt = π
    curves = decision_curves([("a", "A", labels, labels.astype(float))])
    assert curves.prevalence == pytest.approx(0.3) and curves.treat_all == pytest.approx(everyone)
    with pytest.raises(ValueError, match="same films"):
        decision_curves([("a", "A", labels, labels), ("b", "B", labels[:5], labels[:5])])


# --- the figures ----------------------------------------------------------------------------------------------


def test_the_reliability_diagram_shows_each_arms_curve_band_and_histogram() -> None:
    good = summarise_calibration(*_synthetic(400, 8), [f"p{i}" for i in range(400)], n_boot=100)
    poor = summarise_calibration(*_synthetic(400, 8, scale=3.0), [f"p{i}" for i in range(400)], n_boot=100)
    fig = calibration_figure([("good", good), ("poor", poor)], "test", ("normal", "pneumoconiosis"))
    curves, histograms = fig.axes[0::2], fig.axes[1::2]
    for ax, hist, s in zip(curves, histograms, (good, poor)):
        filled = s.curve.counts > 0
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert np.allclose(lines["ideal"].get_xydata(), [[0, 0], [1, 1]])  # the diagonal
        own = [line for line in ax.get_lines() if line.get_label() in ("good", "poor")]
        assert len(own) == 1 and np.allclose(own[0].get_xdata(), s.curve.predicted[filled])
        assert np.allclose(own[0].get_ydata(), s.curve.observed[filled])
        assert len(ax.collections) == 1  # the bootstrap band
        assert ax.get_xlim() == (0, 1) and "pneumoconiosis" in ax.get_ylabel()
        assert sum(p.get_height() for p in hist.patches) == len(s.probs)  # every film in the histogram once
        assert hist.get_xlabel() == "predicted P(pneumoconiosis)"
    assert "Brier" in curves[0].texts[0].get_text() and "slope" in curves[1].texts[0].get_text()


def test_the_decision_figure_plots_every_curve_against_the_threshold() -> None:
    labels, probs, _ = _synthetic(300, 9)
    curves = decision_curves([("a", "arm A", labels, probs), ("b", "arm B", labels, probs ** 2)])
    (ax,) = decision_figure(curves, "test").axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"treat none", "treat all", "arm A", "arm B"}
    for line in lines.values():
        assert np.allclose(line.get_xdata(), THRESHOLDS)
    assert np.all(lines["treat none"].get_ydata() == 0)
    assert np.allclose(lines["treat all"].get_ydata(), treat_all(labels))
    assert np.allclose(lines["arm B"].get_ydata(), net_benefit(labels, probs ** 2))
    assert ax.get_xlabel() == "threshold probability" and ax.get_ylabel() == "net benefit"


# --- summaries and tables -------------------------------------------------------------------------------------


def _calibration_study(root: Path, arms: dict[str, float], folds: int = 3, per_fold: int = 40) -> Path:
    """Fake runs of ``arms`` (id -> log-odds scale: 1 calibrated, > 1 overconfident) with films of two patients'
    each; predictions.csv without a logit column (as older runs), so the log-odds come from prob."""
    for arm, scale in arms.items():
        rng = np.random.default_rng(0)
        for fold in range(folds):
            z = rng.normal(0, 1.5, per_fold)
            labels = (rng.random(per_fold) < expit(z)).astype(int)
            _fake_run(root, arm, fold, [(f"{arm}{fold}_{k}", f"P{fold}_{k // 2}", int(labels[k]),
                                         float(expit(scale * z[k]))) for k in range(per_fold)])
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_summary_holds_each_folds_and_the_pooled_calibration(tmp_path: Path, capsys: pytest.CaptureFixture
                                                                  ) -> None:
    study = _calibration_study(tmp_path / "study", {"calibrated": 1.0, "overconfident": 4.0})
    assert aggregate_main([str(study), "--num-folds", "3", "--bootstrap", "100", "--no-wandb"]) == 0
    rows = {(r["arm"], r["fold"]): r for r in _rows(study / "summary.csv")}
    arms = collect_runs(study)
    for arm in ("calibrated", "overconfident"):
        preds = pd.DataFrame([p.__dict__ for p in arms[arm].predictions])
        for fold, films in preds.groupby("fold"):
            expected = by_hand(films["label"].to_numpy(), films["prob"].to_numpy(),
                               log_odds(films["prob"].to_numpy()))
            for metric, value in expected.items():
                assert float(rows[(arm, str(fold))][metric]) == pytest.approx(value, rel=1e-5, abs=1e-6)
        pooled = by_hand(preds["label"].to_numpy(), preds["prob"].to_numpy(), log_odds(preds["prob"].to_numpy()))
        mean = rows[(arm, "mean")]
        for metric, value in pooled.items():
            assert float(mean[f"pooled_{metric}"]) == pytest.approx(value, rel=1e-5, abs=1e-6)
            assert float(mean[f"pooled_{metric}_ci_low"]) <= float(mean[f"pooled_{metric}"]) <= \
                float(mean[f"pooled_{metric}_ci_high"])
            folds = [float(rows[(arm, str(f))][metric]) for f in range(3)]
            assert float(mean[metric]) == pytest.approx(np.mean(folds), rel=1e-12)
            assert float(rows[(arm, "std")][metric]) == pytest.approx(np.std(folds, ddof=1), rel=1e-9)
    assert float(rows[("overconfident", "mean")]["pooled_calibration_slope"]) < 0.5 < \
        float(rows[("calibrated", "mean")]["pooled_calibration_slope"])
    text = (study / "summary.md").read_text()
    assert "## Calibration" in text and "| calibrated " in text
    console = capsys.readouterr().out  # the console shows the pooled figures as summary.md does
    assert "calibration, pooled out of fold" in console
    for arm in ("calibrated", "overconfident"):
        shown = next(line for line in text.splitlines() if line.startswith(f"| {arm} ") and "[" in line)
        brier = shown.split("|")[2].strip()  # "0.123 [0.101, 0.145]"
        assert brier in console
    for name in ("calibration.png", "decision_curve.png", "decision_curve.csv"):
        assert (study / name).is_file(), name  # written with the summary, without --table
    decisions = pd.read_csv(study / "decision_curve.csv")
    assert list(decisions.columns) == ["threshold", "treat_none", "treat_all", "calibrated", "overconfident"]
    everything = pd.DataFrame([p.__dict__ for p in arms["overconfident"].predictions])
    assert decisions["overconfident"].to_numpy() == pytest.approx(net_benefit(everything["label"], everything["prob"]))
    assert decisions["treat_all"].to_numpy() == pytest.approx(treat_all(everything["label"]))


def test_the_table_holds_the_calibration_columns_and_figures(tmp_path: Path) -> None:
    runs = _calibration_study(tmp_path / "runs", {"baseline": 1.0, "pneumollm": 3.0})
    report = aggregate_table(runs, tmp_path, "table6", reference="baseline", num_folds=3, n_boot=100,
                             use_wandb=False)
    rows = {r["arm"]: r for r in _rows(report.table_csv)}
    summaries = {a.arm: summarise_arm(a, n_boot=100) for a in collect_runs(runs).values()}
    for arm, row in rows.items():
        assert set(TABLE_COLUMNS) <= set(row)
        cal = summaries[arm].calibration
        for metric in CALIBRATION_METRICS:
            assert float(row[f"{metric}_pooled"]) == pytest.approx(cal.pooled[metric].estimate, rel=1e-12)
            assert float(row[f"{metric}_pooled_ci_low"]) == pytest.approx(cal.pooled[metric].low, rel=1e-12)
            assert float(row[f"{metric}_mean"]) == pytest.approx(cal.mean[metric], rel=1e-12)
            assert float(row[f"{metric}_std"]) == pytest.approx(cal.std[metric], rel=1e-12)
    assert float(rows["pneumollm"]["calibration_slope_pooled"]) == pytest.approx(1 / 3, abs=0.15)
    names = {f.name for f in report.figures}
    assert {"calibration.png", "decision_curve.png"} <= names and (tmp_path / "decision_curve.csv").is_file()
    text = report.table_md.read_text()
    assert "## Calibration" in text and "Brier [95% CI]" in text
