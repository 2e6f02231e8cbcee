"""Decision curves (Vickers & Elkin 2006): the net benefit of referring the films whose P(class 1) exceeds a
threshold probability pt, against pt, beside referring every film (treat all) and none (treat none).

Net benefit = TP/n − FP/n · pt / (1 − pt): true referrals per film, less the unnecessary referrals weighted by the
odds pt / (1 − pt) at which a reader would be indifferent between referring and not. A film is referred when
P > pt (as the suite calls a film positive above its threshold), so at pt the net benefit equals
sensitivity · π − (1 − specificity) · (1 − π) · pt / (1 − pt), π the prevalence. Treat all: π − (1 − π) · pt / (1 − pt);
treat none: 0.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumollm.utils.io import atomic_write

THRESHOLDS = np.round(np.linspace(0.01, 0.99, 99), 2)  # the threshold probabilities of every decision curve


def net_benefit(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Net benefit of referring the films with P > pt, at each threshold probability pt."""
    y = np.asarray(labels).astype(bool).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    t = np.asarray(thresholds, dtype=np.float64)
    referred = p[:, None] > t[None, :]
    n = max(len(y), 1)
    tp, fp = (referred & y[:, None]).sum(axis=0), (referred & ~y[:, None]).sum(axis=0)
    return tp / n - fp / n * t / (1 - t)


def treat_all(labels: Sequence[int] | np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Net benefit of referring every film: π − (1 − π) · pt / (1 − pt)."""
    prevalence = float(np.mean(labels)) if len(labels) else 0.0
    t = np.asarray(thresholds, dtype=np.float64)
    return prevalence - (1 - prevalence) * t / (1 - t)


@dataclass(frozen=True)
class DecisionCurves:
    """Every arm's net benefit on the same films, with treat all and treat none."""

    thresholds: np.ndarray
    prevalence: float
    treat_all: np.ndarray
    arms: dict[str, tuple[str, np.ndarray]]  # arm id -> (label, net benefit at each threshold)


def decision_curves(arms: Sequence[tuple[str, str, np.ndarray, np.ndarray]],
                    thresholds: np.ndarray = THRESHOLDS) -> DecisionCurves:
    """The decision curves of arms given as (id, label, labels, P(class 1)) of the same films (a table's arms, or
    the arms scored on one external cohort)."""
    prevalences = {round(float(np.mean(y)), 12) for _, _, y, _ in arms}
    if len(prevalences) > 1:
        raise ValueError(f"decision curves compare arms on the same films; their prevalences differ: {prevalences}")
    first = arms[0][2] if arms else np.zeros(0)
    return DecisionCurves(np.asarray(thresholds, dtype=np.float64), float(np.mean(first)) if len(first) else 0.0,
                          treat_all(first, thresholds),
                          {arm: (label, net_benefit(y, p, thresholds)) for arm, label, y, p in arms})


def write_decision_csv(curves: DecisionCurves, path: Path) -> Path:
    """``decision_curve.csv``: one row per threshold probability; columns ``threshold``, ``treat_none``,
    ``treat_all`` and one per arm id (its net benefit), unrounded."""
    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["threshold", "treat_none", "treat_all", *curves.arms])
            for k, t in enumerate(curves.thresholds):
                out.writerow([float(t), 0.0, float(curves.treat_all[k]),
                              *(float(nb[k]) for _, nb in curves.arms.values())])

    atomic_write(path, writer)
    return path
