"""Every figure the suite reports, from stored predictions: one implementation for the per-fold test metrics in
``metrics.json``, the pooled and subgroup figures of summaries and tables, and external validation.

Binary ("any" class 1) figures: sensitivity, specificity and accuracy of the calls ``prob > threshold``, the AUC
of ``prob`` (scikit-learn's ``roc_auc_score``: tied probabilities count half) and AVG, their mean. Staged
(multi-class) figures: stage accuracy, macro one-vs-rest AUC, quadratic-weighted Cohen's kappa, and each stage's
sensitivity and specificity (the most probable stage is the call). Multi-label figures: macro and micro AUC, and
each finding's AUC, sensitivity and specificity (a finding's sigmoid above 0.5 is the call). Percentages, except
kappa (a coefficient in [-1, 1]); NaN where a figure does not exist (a class absent from the films). Calibration
of P(class 1) (``calibration_metrics``): Brier score and ECE on the probability scale, the calibration slope and
intercept on the log-odds scale, from the stored log-odds where given.

The inputs are the numbers a ``predictions.csv`` holds, so a figure computed while a run is written equals the
figure recomputed from its file: probabilities are written exactly (``records.number_text``). Pure NumPy and
scikit-learn, importable without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pneumollm.data.targets import BINARY, MULTICLASS, LabelTask
from pneumollm.training.calibration_metrics import CALIBRATION_METRICS, calibration_metrics

BINARY_METRICS = ("sensitivity", "specificity", "accuracy", "auc", "avg")
UNSCALED = ("kappa", *CALIBRATION_METRICS)  # not percentages (coefficients, probability-scale errors)


def auc_percent(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """AUC (percent) of ``scores`` for the 0/1 ``labels`` (tied scores count half); NaN when one class is absent."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64))) * 100


def binary_metrics(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                   threshold: float | Sequence[float] | np.ndarray = 0.5) -> dict[str, float]:
    """Sensitivity, specificity, accuracy, AUC and AVG (percent) of P(class 1) against the 0/1 labels; calls are
    ``prob > threshold`` (one cut-off, or one per film: pooled films of folds with their own cut-offs)."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    called, positive = p > np.asarray(threshold, dtype=np.float64), y == 1
    values = {
        "sensitivity": called[positive].mean() * 100 if positive.any() else float("nan"),
        "specificity": (~called[~positive]).mean() * 100 if (~positive).any() else float("nan"),
        "accuracy": (called == positive).mean() * 100 if len(y) else float("nan"),
        "auc": auc_percent(y, p),
    }
    values["avg"] = float(np.mean([values[m] for m in BINARY_METRICS[:4]]))
    return {k: float(v) for k, v in values.items()}


def _stage_metrics(task: LabelTask, y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, cohen_kappa_score, multilabel_confusion_matrix, roc_auc_score

    labels = list(range(task.num_outputs))
    called = probs.argmax(axis=1)
    values = {"stage_accuracy": accuracy_score(y, called) * 100,
              "kappa": cohen_kappa_score(y, called, labels=labels, weights="quadratic")}
    present = np.unique(y)
    values["macro_auc"] = (roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=labels) * 100
                           if len(present) == len(labels) else float("nan"))
    matrices = multilabel_confusion_matrix(y, called, labels=labels)  # per stage: [[tn, fp], [fn, tp]]
    for c, ((tn, fp), (fn, tp)) in zip(task.classes, matrices):
        values[f"sensitivity_stage_{c}"] = tp / (tp + fn) * 100 if tp + fn else float("nan")
        values[f"specificity_stage_{c}"] = tn / (tn + fp) * 100 if tn + fp else float("nan")
    return {k: float(v) for k, v in values.items()}


def _finding_metrics(task: LabelTask, y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import multilabel_confusion_matrix, roc_auc_score

    both = [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
    values: dict[str, float] = {
        "macro_auc": roc_auc_score(y[:, both], probs[:, both], average="macro") * 100
        if len(both) == y.shape[1] else float("nan"),
        "micro_auc": roc_auc_score(y, probs, average="micro") * 100 if 0 < y.sum() < y.size else float("nan"),
    }
    matrices = multilabel_confusion_matrix(y, (probs > 0.5).astype(int))
    for k, (name, ((tn, fp), (fn, tp))) in enumerate(zip(task.label_columns, matrices)):
        values[f"auc_{name}"] = roc_auc_score(y[:, k], probs[:, k]) * 100 if k in both else float("nan")
        values[f"sensitivity_{name}"] = tp / (tp + fn) * 100 if tp + fn else float("nan")
        values[f"specificity_{name}"] = tn / (tn + fp) * 100 if tn + fp else float("nan")
    return {k: float(v) for k, v in values.items()}


def task_metrics(task: LabelTask, targets: Sequence | np.ndarray, outputs: Sequence | np.ndarray) -> dict[str, float]:
    """The staged or multi-label figures of films (none for binary). ``targets``: stage indices [N] or findings
    [N, L]; ``outputs``: each output's probability [N, C]."""
    if task.task == BINARY:
        return {}
    probs = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    if task.task == MULTICLASS:
        return _stage_metrics(task, np.asarray(targets).astype(int).reshape(-1), probs)
    return _finding_metrics(task, np.asarray(targets).astype(int).reshape(len(probs), -1), probs)


def stage_confusion(task: LabelTask, targets: Sequence | np.ndarray,
                    outputs: Sequence | np.ndarray) -> list[list[int]] | None:
    """Counts of (true stage, most probable stage); None for a task without stages."""
    if task.task != MULTICLASS:
        return None
    from sklearn.metrics import confusion_matrix

    y = np.asarray(targets).astype(int).reshape(-1)
    called = np.asarray(outputs, dtype=np.float64).reshape(len(y), -1).argmax(axis=1)
    return confusion_matrix(y, called, labels=list(range(task.num_outputs))).astype(int).tolist()


def prediction_metrics(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                       threshold: float | Sequence[float] | np.ndarray = 0.5, task: LabelTask | None = None,
                       targets: Sequence | np.ndarray | None = None,
                       outputs: Sequence | np.ndarray | None = None,
                       logits: Sequence[float | None] | np.ndarray | None = None) -> dict[str, float]:
    """Every figure of a set of predictions: the binary ones (``binary_metrics``), the calibration of P(class 1)
    (``calibration_metrics``; ``logits``: its stored log-odds, else those of ``probs``) and, for a staged or
    multi-label ``task``, its own (``task_metrics``, from ``targets`` and ``outputs``)."""
    values = binary_metrics(labels, probs, threshold) | calibration_metrics(labels, probs, logits)
    if task is not None and task.task != BINARY and targets is not None and outputs is not None and len(labels):
        values |= task_metrics(task, targets, outputs)
    return values
