"""Calibration of stored predictions: how far P(class 1) can be read as a probability. The figures
``prediction_metrics`` adds to every fold's ``metrics.json`` and the tables pool (``analysis.calibration``).

- ``brier``: the mean squared difference between ``prob`` and the 0/1 label (scikit-learn's
  ``brier_score_loss``), on the probability scale 0-1; 0 is best, a constant prediction at the prevalence π scores
  π(1 − π).
- ``ece``: expected calibration error over ``ECE_BINS`` (10) equal-width bins of ``prob`` on [0, 1], each bin
  weighted by its share of the films: Σ_k n_k / n · |share of class 1 in bin k − mean prob in bin k|, 0-1. Bin k
  holds (k/10, (k+1)/10], the first also 0: the bins of scikit-learn's ``calibration_curve(strategy="uniform")``.
- ``calibration_slope``: β of the logistic recalibration model logit P(y = 1) = α + β·z, z the prediction's
  log-odds (scikit-learn's ``LogisticRegression`` without penalty). 1 is ideal; below 1 the predictions are too
  extreme (overfitting), above 1 too modest. NaN when the log-odds separate the classes (no finite estimate).
- ``calibration_intercept``: calibration-in-the-large, a of logit P(y = 1) = a + z with z as an offset (slope fixed
  at 1; Van Calster et al. 2016, 2019). 0 is ideal; above 0 the predictions are too low on average, below 0 too
  high. Solved with scipy's ``brentq`` on its score equation mean(expit(a + z)) = mean(y) (scikit-learn has no
  offset).

z is the stored log-odds (the ``logit`` column: it does not saturate where ``prob`` reaches 1.0 in float32) where
present, else log(p / (1 − p)) of ``prob`` clipped to [1e-6, 1 − 1e-6] (runs written before the column existed).
Pure NumPy, SciPy and scikit-learn, importable without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import expit

CALIBRATION_METRICS = ("brier", "ece", "calibration_slope", "calibration_intercept")
ECE_BINS = 10
PROB_CLIP = 1e-6  # prob is clipped to [PROB_CLIP, 1 - PROB_CLIP] before its log-odds are taken


def log_odds(probs: Sequence[float] | np.ndarray,
             logits: Sequence[float | None] | np.ndarray | None = None) -> np.ndarray:
    """Each film's log-odds: its stored logit where given (not None / NaN), else logit(prob clipped)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), PROB_CLIP, 1 - PROB_CLIP)
    z = np.log(p / (1 - p))
    if logits is None:
        return z
    if isinstance(logits, np.ndarray) and logits.dtype.kind == "f":
        stored = logits.astype(np.float64).reshape(z.shape)
    else:
        stored = np.array([np.nan if v is None else v for v in logits], dtype=np.float64).reshape(z.shape)
    return np.where(np.isnan(stored), z, stored)


def bin_ids(probs: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Each probability's equal-width bin, as scikit-learn's ``calibration_curve`` assigns it."""
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], probs)


def reliability_bins(labels: np.ndarray, probs: np.ndarray,
                     n_bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(films, mean prob, share of class 1) per equal-width bin; NaN for an empty bin."""
    ids = bin_ids(probs, n_bins)
    counts = np.bincount(ids, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(ids, weights=probs, minlength=n_bins) / counts
        observed = np.bincount(ids, weights=labels, minlength=n_bins) / counts
    return counts, predicted, observed


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE over ``n_bins`` equal-width bins, weighted by the films in each (0-1); NaN without films."""
    if not len(probs):
        return float("nan")
    counts, predicted, observed = reliability_bins(labels, probs, n_bins)
    filled = counts > 0
    return float(np.sum(counts[filled] * np.abs(observed[filled] - predicted[filled])) / counts.sum())


def separated(labels: np.ndarray, z: np.ndarray) -> bool:
    """Whether the log-odds (quasi-)separate the classes, or a class is absent: the recalibration slope then has
    no finite maximum-likelihood estimate."""
    positive = labels == 1
    if positive.all() or not positive.any():
        return True
    return bool(z[positive].min() >= z[~positive].max() or z[positive].max() <= z[~positive].min())


def logistic_recalibration(labels: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """(α, β) of logit P(y=1) = α + β·z by unpenalised logistic regression (scikit-learn); NaN where it has no
    finite estimate (``separated``). β is the calibration slope; α + β·z are Platt-recalibrated log-odds."""
    if separated(labels, z):
        return float("nan"), float("nan")
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=100)
    model.fit(z.reshape(-1, 1), labels)
    return float(model.intercept_.item()), float(model.coef_.item())


def calibration_slope(labels: np.ndarray, z: np.ndarray) -> float:
    """β of logit P(y=1) = α + β·z by unpenalised logistic regression; NaN where it has no finite estimate."""
    return logistic_recalibration(labels, z)[1]


def calibration_intercept(labels: np.ndarray, z: np.ndarray) -> float:
    """a of logit P(y=1) = a + z (z an offset): the root of mean(expit(a + z)) = mean(y); NaN with one class."""
    rate = float(np.mean(labels)) if len(labels) else float("nan")
    if not 0 < rate < 1:
        return float("nan")
    from scipy.optimize import brentq

    # mean(expit(a + z)) lies between expit(a + min z) and expit(a + max z), which brackets the root
    base = np.log(rate / (1 - rate))
    low, high = base - float(z.max()), base - float(z.min())
    if high - low < 1e-12:
        return float(low)
    return float(brentq(lambda a: float(np.mean(expit(a + z))) - rate, low, high, xtol=1e-12, rtol=1e-12))


def calibration_metrics(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                        logits: Sequence[float | None] | np.ndarray | None = None) -> dict[str, float]:
    """Brier score, ECE, calibration slope and intercept of P(class 1) against the 0/1 labels (module docstring);
    ``logits``: the stored log-odds (None, or None / NaN entries, where a run stored none)."""
    from sklearn.metrics import brier_score_loss

    y = np.asarray(labels).astype(int).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if not len(y):
        return dict.fromkeys(CALIBRATION_METRICS, float("nan"))
    z = log_odds(p, logits)
    return {"brier": float(brier_score_loss(y, p, labels=[0, 1])), "ece": expected_calibration_error(y, p),
            "calibration_slope": calibration_slope(y, z), "calibration_intercept": calibration_intercept(y, z)}
