"""Staged (multi-class) and multi-label figures of an arm: per fold from its runs' metrics, pooled out of fold
from its predictions with scikit-learn, and a patient-level bootstrap interval for every pooled figure.

The metric names match the per-fold ones the runs record (``training.prediction_metrics``): ``stage_accuracy``,
``macro_auc``, ``kappa`` (quadratic weights, a coefficient), ``sensitivity_stage_<class>`` and
``specificity_stage_<class>``; for findings ``macro_auc``, ``micro_auc``, ``auc_<finding>``,
``sensitivity_<finding>`` and ``specificity_<finding>``. All in percent except kappa.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pneumollm.analysis.collect import ArmRuns
from pneumollm.analysis.stats import Interval, bootstrap_by_patient, mean_std, rank_auc
from pneumollm.data.targets import MULTICLASS, LabelTask
from pneumollm.training.prediction_metrics import stage_confusion, task_metrics
from pneumollm.utils.markdown import markdown_table

STAGE_SUMMARY = ("stage_accuracy", "macro_auc", "kappa")
FINDING_SUMMARY = ("macro_auc", "micro_auc")
HEADERS = {"stage_accuracy": "Stage acc.", "macro_auc": "macro AUC", "micro_auc": "micro AUC",
           "kappa": "κ (quadratic)"}


def arm_task(arm: ArmRuns) -> LabelTask:
    """The task of an arm's runs."""
    if arm.task == MULTICLASS:
        return LabelTask(task=arm.task, classes=arm.classes)
    return LabelTask(task=arm.task, label_columns=arm.classes)


def summary_metrics(task: LabelTask) -> tuple[str, ...]:
    """The task's headline metrics (the per-output ones come from ``per_output_metrics``)."""
    return STAGE_SUMMARY if task.task == MULTICLASS else FINDING_SUMMARY


def per_output_metrics(task: LabelTask) -> list[tuple[str, str, str]]:
    """(output name, metric kind, metric key) of every per-stage or per-finding figure."""
    if task.task == MULTICLASS:
        return [(c, kind, f"{kind}_stage_{c}") for c in task.classes for kind in ("sensitivity", "specificity")]
    return [(n, kind, f"{kind}_{n}") for n in task.label_columns for kind in ("auc", "sensitivity", "specificity")]


def metric_names(task: LabelTask) -> list[str]:
    """Every task metric, headline first."""
    return [*summary_metrics(task), *(key for _, _, key in per_output_metrics(task))]


def pooled_figures(task: LabelTask, targets: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Every task metric on predictions pooled together (``training.prediction_metrics.task_metrics``, the function
    that also gives each fold's figures). ``targets``: stage indices [N] or findings [N, L]; ``probs``: the output
    probabilities [N, C]."""
    return task_metrics(task, targets, probs)


def resample_figures(task: LabelTask, targets: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``pooled_figures`` for the bootstrap's thousands of resamples: the same figures from the confusion counts
    and the rank-sum AUC (``stats.rank_auc``), equal to scikit-learn's within 1e-9 (tests/test_staging.py)
    at a hundredth of the cost (scikit-learn validates its inputs on every call, ~9 ms per resample)."""
    probs = np.asarray(probs, dtype=np.float64)
    k = task.num_outputs
    values: dict[str, float] = {}
    if task.task == MULTICLASS:
        y = np.asarray(targets).reshape(-1)
        counts = np.bincount(y * k + probs.argmax(axis=1), minlength=k * k).reshape(k, k).astype(np.float64)
        n, true, called = counts.sum(), counts.sum(axis=1), counts.sum(axis=0)
        weights = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2) / (k - 1) ** 2
        expected = np.outer(true, called) / n
        values["stage_accuracy"] = np.trace(counts) / n * 100
        values["kappa"] = 1 - (weights * counts).sum() / (weights * expected).sum()
        present = all(0 < t < n for t in true)
        values["macro_auc"] = float(np.mean([rank_auc((y == c).astype(int), probs[:, c]) for c in range(k)])) * 100 \
            if present else float("nan")
        for c, name in enumerate(task.classes):
            hit = counts[c, c]
            values[f"sensitivity_stage_{name}"] = hit / true[c] * 100 if true[c] else float("nan")
            negatives = n - true[c]
            values[f"specificity_stage_{name}"] = (negatives - called[c] + hit) / negatives * 100 if negatives \
                else float("nan")
        return values
    y = np.asarray(targets).astype(int)
    called = probs > 0.5
    both = [c for c in range(k) if 0 < y[:, c].sum() < len(y)]
    aucs = {c: rank_auc(y[:, c], probs[:, c]) * 100 for c in both}
    values["macro_auc"] = float(np.mean(list(aucs.values()))) if len(both) == k else float("nan")
    values["micro_auc"] = rank_auc(y.ravel(), probs.ravel()) * 100 if 0 < y.sum() < y.size else float("nan")
    for c, name in enumerate(task.label_columns):
        positive = y[:, c] == 1
        values[f"auc_{name}"] = aucs.get(c, float("nan"))
        values[f"sensitivity_{name}"] = called[positive, c].mean() * 100 if positive.any() else float("nan")
        values[f"specificity_{name}"] = (~called[~positive, c]).mean() * 100 if (~positive).any() else float("nan")
    return {key: float(v) for key, v in values.items()}


def pooled_intervals(arm: ArmRuns, n_boot: int = 2000, seed: int = 0) -> dict[str, Interval]:
    """Every task metric pooled over the arm's out-of-fold predictions, with a 95% percentile interval from
    resampling patients (films of one patient drawn together). Resamples that miss a stage (or a finding's
    presence or absence) are redrawn, since their AUCs do not exist."""
    task = arm_task(arm)
    targets = np.array([p.target for p in arm.predictions])
    probs = np.array([p.outputs for p in arm.predictions], dtype=np.float64)
    if task.task == MULTICLASS:
        targets = targets.reshape(-1)

        def complete(idx: np.ndarray) -> bool:
            return len(np.unique(targets[idx])) == task.num_outputs
    else:
        def complete(idx: np.ndarray) -> bool:
            counts = targets[idx].sum(axis=0)
            return bool(((counts > 0) & (counts < len(idx))).all())

    return bootstrap_by_patient(lambda idx: resample_figures(task, targets[idx], probs[idx]),
                                [p.patient_id for p in arm.predictions], n_boot=n_boot, seed=seed, valid=complete,
                                estimate=pooled_figures(task, targets, probs))


def fold_figures(arm: ArmRuns, task: LabelTask) -> dict[int, dict[str, float]]:
    """Each fold's task metrics as its run recorded them (NaN where a fold lacks one)."""
    names = metric_names(task)
    return {f: {m: arm.folds[f].figure(m) for m in names} for f in sorted(arm.folds)}


def pooled_confusion(arm: ArmRuns) -> np.ndarray:
    """Counts of (true stage, most probable stage) over the arm's out-of-fold predictions."""
    counts = stage_confusion(arm_task(arm), [p.target[0] for p in arm.predictions],
                             [p.outputs for p in arm.predictions])
    return np.asarray(counts)


@dataclass
class TaskSummary:
    """An arm's staged or multi-label figures: per fold, mean ± std over folds, pooled with an interval."""

    task: LabelTask
    per_fold: dict[int, dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float]
    pooled: dict[str, Interval]
    confusion: np.ndarray | None = None  # stages: pooled counts of (true, most probable) stage


def summarise_task(arm: ArmRuns, n_boot: int = 2000) -> TaskSummary:
    """The task figures of an arm with every fold (``ArmRuns.task`` not binary)."""
    task = arm_task(arm)
    per_fold = fold_figures(arm, task)
    stats = {m: mean_std([per_fold[f][m] for f in per_fold]) for m in metric_names(task)}
    return TaskSummary(task, per_fold, {m: v[0] for m, v in stats.items()}, {m: v[1] for m, v in stats.items()},
                       pooled_intervals(arm, n_boot=n_boot),
                       pooled_confusion(arm) if task.task == MULTICLASS else None)


def digits(metric: str) -> int:
    """Decimals a metric is shown with: kappa is a coefficient, the others percentages."""
    return 3 if metric == "kappa" else 2


def fmt(value: float, metric: str) -> str:
    return "–" if np.isnan(value) else f"{value:.{digits(metric)}f}"


def mean_std_text(summary: TaskSummary, metric: str) -> str:
    return f"{fmt(summary.mean[metric], metric)} ± {fmt(summary.std[metric], metric)}"


def pooled_text(summary: TaskSummary, metric: str) -> str:
    return summary.pooled[metric].format(digits(metric))


def headline_rows(labelled: Sequence[tuple[str, TaskSummary]]) -> list[dict[str, str]]:
    """Rows of the task's headline figures: per fold, mean ± std over folds, then pooled [95% CI]."""
    rows = []
    for label, s in labelled:
        names = summary_metrics(s.task)
        for fold, values in s.per_fold.items():
            rows.append({"arm": label, "fold": str(fold), **{HEADERS[m]: fmt(values[m], m) for m in names}})
        rows.append({"arm": label, "fold": "mean ± std", **{HEADERS[m]: mean_std_text(s, m) for m in names}})
        rows.append({"arm": label, "fold": "pooled [95% CI]", **{HEADERS[m]: pooled_text(s, m) for m in names}})
    return rows


def output_rows(labelled: Sequence[tuple[str, TaskSummary]]) -> list[dict[str, str]]:
    """One row per arm and stage (or finding): each per-output figure as mean ± std and pooled [95% CI]."""
    rows = []
    for label, s in labelled:
        by_output: dict[str, dict[str, str]] = {}
        for output, kind, key in per_output_metrics(s.task):
            row = by_output.setdefault(output, {"arm": label, OUTPUT_HEADER[s.task.task]: output})
            row[f"{KIND_HEADERS[kind]} mean ± std"] = mean_std_text(s, key)
            row[f"{KIND_HEADERS[kind]} pooled [95% CI]"] = pooled_text(s, key)
        rows += list(by_output.values())
    return rows


def confusion_lines(label: str, s: TaskSummary) -> list[str]:
    """A Markdown table of an arm's pooled confusion matrix (rows: true stage, columns: most probable stage)."""
    if s.confusion is None:
        return []
    header = ["true \\ called", *s.task.classes]
    body = [[c, *(str(int(n)) for n in row)] for c, row in zip(s.task.classes, s.confusion)]
    return [f"Pooled confusion matrix, {label} (films; rows: true stage, columns: most probable stage):", "",
            markdown_table(header, body), ""]


OUTPUT_HEADER = {MULTICLASS: "stage", "multilabel": "finding"}
KIND_HEADERS = {"sensitivity": "Sens.", "specificity": "Spec.", "auc": "AUC"}


def markdown_sections(labelled: Sequence[tuple[str, TaskSummary]]) -> list[str]:
    """The task's sections of summary.md and table.md: headline figures, per-output figures, confusion matrices."""
    if not labelled:
        return []
    task = labelled[0][1].task
    what = "Staged (ILO profusion)" if task.task == MULTICLASS else "Multi-label (co-finding)"
    lines = [f"## {what} figures", ""]
    for rows in (headline_rows(labelled), output_rows(labelled)):
        header = list(rows[0])
        lines += [markdown_table(header, ([r.get(h, "") for h in header] for r in rows)), ""]
    for label, s in labelled:
        lines += confusion_lines(label, s)
    calls = ("the most probable stage" if task.task == MULTICLASS else "a finding's sigmoid above 0.5")
    lines.append(f"Figures in percent except κ (quadratic-weighted Cohen's kappa, a coefficient); calls are {calls}; "
                 "AUCs one-vs-rest; pooled figures over all out-of-fold predictions with 95% percentile bootstrap "
                 "intervals resampling patients.")
    return lines
