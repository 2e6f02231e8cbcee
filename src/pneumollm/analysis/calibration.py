"""Calibration of an arm's out-of-fold predictions: Brier score, ECE, calibration slope and intercept per fold
(the figures each run's ``metrics.json`` records), mean ± std over folds, and pooled over all folds with 95 %
patient-bootstrap intervals; the pooled reliability curve with a pointwise bootstrap band. The definitions are
those of ``training.calibration_metrics`` (docs/tables.md, "Calibration and decision curves")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from pneumollm.analysis.collect import ArmRuns
from pneumollm.analysis.stats import Interval, bootstrap_by_patient, mean_std
from pneumollm.training.calibration_metrics import (
    CALIBRATION_METRICS,
    ECE_BINS,
    calibration_intercept,
    calibration_metrics,
    expected_calibration_error,
    log_odds,
    reliability_bins,
    separated,
)

HEADERS = {"brier": "Brier", "ece": "ECE", "calibration_slope": "slope", "calibration_intercept": "intercept"}
DIGITS = {"brier": 3, "ece": 3, "calibration_slope": 2, "calibration_intercept": 2}


@dataclass(frozen=True)
class ReliabilityCurve:
    """The pooled predictions in ``ECE_BINS`` equal-width bins, with a pointwise bootstrap band of each bin's share
    of class 1 (NaN where a bin is empty)."""

    edges: np.ndarray  # bin edges on [0, 1]
    counts: np.ndarray  # films per bin
    predicted: np.ndarray  # mean P(class 1) per bin
    observed: np.ndarray  # share of class 1 per bin
    low: np.ndarray  # pointwise 95 % band of ``observed``
    high: np.ndarray
    resamples: int  # bootstrap resamples the band comes from


@dataclass
class CalibrationSummary:
    """One arm's calibration: per fold, mean ± std over folds, pooled with intervals, the reliability curve, and
    the pooled predictions themselves (for the histogram and the decision curve)."""

    pooled: dict[str, Interval]
    curve: ReliabilityCurve
    labels: np.ndarray
    probs: np.ndarray
    patients: int
    per_fold: dict[int, dict[str, float]] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)


def fast_slope(labels: np.ndarray, z: np.ndarray, iterations: int = 50) -> float:
    """``calibration_slope`` for the bootstrap's thousands of resamples: Newton's method on the two-parameter
    log-likelihood (scikit-learn's fit costs ~5 ms a resample), equal to it within 1e-6 (tests/test_calibration.py)."""
    if separated(labels, z):
        return float("nan")
    design = np.column_stack([np.ones_like(z), z])
    beta = np.zeros(2)
    for _ in range(iterations):
        p = expit(design @ beta)
        gradient = design.T @ (labels - p)
        hessian = (design * (p * (1 - p))[:, None]).T @ design
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            return float("nan")
        beta = beta + step
        if np.abs(step).max() < 1e-12:
            break
    return float(beta[1])


def resample_figures(labels: np.ndarray, probs: np.ndarray, z: np.ndarray) -> dict[str, float]:
    """The calibration figures of one bootstrap resample (the slope by ``fast_slope``) and its reliability bins'
    shares of class 1 (keys ``bin_<k>``; NaN for an empty bin, which the interval leaves out)."""
    _, _, observed = reliability_bins(labels, probs)
    values = {"brier": float(np.mean((probs - labels) ** 2)), "ece": expected_calibration_error(labels, probs),
              "calibration_slope": fast_slope(labels, z), "calibration_intercept": calibration_intercept(labels, z)}
    return values | {f"bin_{k}": float(v) for k, v in enumerate(observed)}


def calibration_by_patient(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                           logits: Sequence[float | None] | np.ndarray | None, patients: Sequence[str],
                           n_boot: int = 2000, confidence: float = 0.95,
                           seed: int = 0) -> tuple[dict[str, Interval], ReliabilityCurve]:
    """The calibration figures of predictions pooled together, each with a percentile interval from resampling
    *patients* (``stats.bootstrap_by_patient``; resamples with a single class are redrawn), and the reliability
    curve with the same resamples' pointwise band. A resample whose log-odds separate the classes has no slope
    and is left out of the slope's interval."""
    y = np.asarray(labels).astype(int).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    z = log_odds(p, logits)
    counts, predicted, observed = reliability_bins(y, p)
    estimate = calibration_metrics(y, p, z) | {f"bin_{k}": float(v) for k, v in enumerate(observed)}
    intervals = bootstrap_by_patient(lambda idx: resample_figures(y[idx], p[idx], z[idx]), list(patients),
                                     n_boot=n_boot, confidence=confidence, seed=seed,
                                     valid=lambda idx: 0 < y[idx].sum() < len(idx), estimate=estimate)
    bins = [intervals.pop(f"bin_{k}") for k in range(ECE_BINS)]
    valid = 0 < y.sum() < len(y)
    curve = ReliabilityCurve(np.linspace(0.0, 1.0, ECE_BINS + 1), counts, predicted, observed,
                             np.array([b.low for b in bins]), np.array([b.high for b in bins]),
                             n_boot if valid else 0)
    return intervals, curve


def summarise_calibration(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                          logits: Sequence[float | None] | np.ndarray | None, patients: Sequence[str],
                          folds: Sequence[int] | None = None, n_boot: int = 2000,
                          seed: int = 0) -> CalibrationSummary:
    """Calibration of a set of predictions: pooled with intervals and the reliability curve, and with ``folds``
    (each film's fold) each fold's figures (``calibration_metrics``, as its ``metrics.json``) and their mean ± std."""
    y = np.asarray(labels).astype(int).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    z = log_odds(p, logits)
    pooled, curve = calibration_by_patient(y, p, z, patients, n_boot=n_boot, seed=seed)
    summary = CalibrationSummary(pooled, curve, y, p, len(set(patients)))
    if folds is not None:
        fold_of = np.asarray(folds)
        summary.per_fold = {int(f): calibration_metrics(y[fold_of == f], p[fold_of == f], z[fold_of == f])
                            for f in sorted(set(fold_of.tolist()))}
        stats = {m: mean_std([v[m] for v in summary.per_fold.values()]) for m in CALIBRATION_METRICS}
        summary.mean, summary.std = {m: s[0] for m, s in stats.items()}, {m: s[1] for m, s in stats.items()}
    return summary


def arm_calibration(arm: ArmRuns, n_boot: int = 2000) -> CalibrationSummary:
    """An arm's calibration from its out-of-fold predictions: P(class 1) (``prob``; P(any) for staged and
    multi-label runs) and its stored log-odds (``logit``) where the runs wrote them."""
    preds = arm.predictions
    return summarise_calibration([p.label for p in preds], [p.prob for p in preds], [p.logit for p in preds],
                                 [p.patient_id for p in preds], folds=[p.fold for p in preds], n_boot=n_boot)


# --- the rows and columns of summaries and tables --------------------------------------------------------------


def _number(value: float) -> float | str:
    """A figure for a CSV, unrounded; empty where it does not exist."""
    return "" if value is None or np.isnan(value) else float(value)


def summary_fields() -> list[str]:
    """summary.csv's calibration columns: each fold's figure (and mean / std over folds on those rows), then on the
    mean row the pooled figure with its interval."""
    return [*CALIBRATION_METRICS,
            *(f"pooled_{m}{end}" for m in CALIBRATION_METRICS for end in ("", "_ci_low", "_ci_high"))]


def summary_values(summary: CalibrationSummary | None, fold: int | str) -> dict[str, float | str]:
    """One summary.csv row's calibration values: a fold's (``fold``: its number), ``"mean"`` (with the pooled
    figures) or ``"std"``."""
    if summary is None:
        return {}
    if fold == "std":
        return {m: _number(summary.std.get(m, float("nan"))) for m in CALIBRATION_METRICS}
    if fold != "mean":
        return {m: _number(summary.per_fold.get(int(fold), {}).get(m, float("nan"))) for m in CALIBRATION_METRICS}
    values = {m: _number(summary.mean.get(m, float("nan"))) for m in CALIBRATION_METRICS}
    for m in CALIBRATION_METRICS:
        i = summary.pooled[m]
        values |= {f"pooled_{m}": _number(i.estimate), f"pooled_{m}_ci_low": _number(i.low),
                   f"pooled_{m}_ci_high": _number(i.high)}
    return values


TABLE_COLUMNS = tuple(f"{m}_{stat}" for m in CALIBRATION_METRICS
                      for stat in ("mean", "std", "pooled", "pooled_ci_low", "pooled_ci_high"))


def table_values(summary: CalibrationSummary | None) -> dict[str, float | str]:
    """One table.csv row's ``TABLE_COLUMNS``: mean and std over folds, pooled with its interval."""
    if summary is None:
        return dict.fromkeys(TABLE_COLUMNS, "")
    values: dict[str, float | str] = {}
    for m in CALIBRATION_METRICS:
        i = summary.pooled[m]
        values |= {f"{m}_mean": _number(summary.mean.get(m, float("nan"))),
                   f"{m}_std": _number(summary.std.get(m, float("nan"))), f"{m}_pooled": _number(i.estimate),
                   f"{m}_pooled_ci_low": _number(i.low), f"{m}_pooled_ci_high": _number(i.high)}
    return values


EXTERNAL_COLUMNS = tuple(f"{m}{end}" for m in CALIBRATION_METRICS for end in ("", "_ci_low", "_ci_high"))


def external_values(summary: CalibrationSummary) -> dict[str, float | str]:
    """One external table.csv row's ``EXTERNAL_COLUMNS``: each figure on the external films with its interval."""
    values: dict[str, float | str] = {}
    for m in CALIBRATION_METRICS:
        i = summary.pooled[m]
        values |= {m: _number(i.estimate), f"{m}_ci_low": _number(i.low), f"{m}_ci_high": _number(i.high)}
    return values


def pooled_cell(summary: CalibrationSummary, metric: str) -> str:
    """A pooled figure with its interval as the Markdown files show it."""
    return summary.pooled[metric].format(DIGITS[metric])


def markdown_section(labelled: Sequence[tuple[str, CalibrationSummary]],
                     what: str = "all out-of-fold predictions pooled") -> list[str]:
    """The calibration section of summary.md, table.md and an external table.md: one row per arm."""
    from pneumollm.utils.markdown import markdown_table

    if not labelled:
        return []
    per_fold = any(s.per_fold for _, s in labelled)
    header = ["Arm", *(f"{HEADERS[m]} [95% CI]" for m in CALIBRATION_METRICS)]
    if per_fold:
        header += [f"{HEADERS[m]} mean ± std" for m in CALIBRATION_METRICS]
    body = []
    for label, s in labelled:
        row = [label, *(pooled_cell(s, m) for m in CALIBRATION_METRICS)]
        if per_fold:
            row += [_mean_std(s, m) for m in CALIBRATION_METRICS]
        body.append(row)
    resamples = max(s.curve.resamples for _, s in labelled)
    return ["", "## Calibration", "", markdown_table(header, body), "",
            f"Calibration of P(class 1) ({what}; P(any) for staged and multi-label runs), with 95% percentile "
            f"bootstrap intervals resampling patients ({resamples} resamples). Brier: mean (P − label)²; ECE: expected "
            f"calibration error over {ECE_BINS} equal-width bins of P, weighted by their films (both 0-1, 0 is "
            "best). Slope: of the logistic regression of the label on the log-odds (1 is ideal, < 1: predictions "
            "too extreme); intercept: calibration-in-the-large, with the log-odds as an offset (0 is ideal, > 0: "
            "predictions too low on average). Log-odds: the stored logit column, else logit(P) clipped to "
            "[1e-6, 1 − 1e-6]; '–': no estimate (the log-odds separate the classes). calibration.png shows the "
            "reliability curves, decision_curve.png the net benefit (docs/tables.md)."]


def _cell(value: float, metric: str) -> str:
    return "–" if np.isnan(value) else f"{value:.{DIGITS[metric]}f}"


def _mean_std(s: CalibrationSummary, metric: str) -> str:
    return f"{_cell(s.mean.get(metric, float('nan')), metric)} ± {_cell(s.std.get(metric, float('nan')), metric)}"
