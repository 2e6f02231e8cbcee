"""Per-arm cross-validation summaries: per-fold rows, mean ± std over folds, pooled out-of-fold AUC."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumollm.analysis.auc import pooled_auc
from pneumollm.analysis.calibration import (
    CalibrationSummary,
    arm_calibration,
    markdown_section,
    summary_fields,
    summary_values,
)
from pneumollm.analysis.collect import ArmRuns
from pneumollm.analysis.wording import class_words, common_class_names, probability_name, size_words
from pneumollm.data.targets import BINARY, BINARY_CLASSES
from pneumollm.utils.io import atomic_write, atomic_write_text
from pneumollm.utils.markdown import markdown_table

if TYPE_CHECKING:
    from pneumollm.analysis.task_summary import TaskSummary

METRICS = ("sensitivity", "specificity", "accuracy", "auc", "avg")
HEADERS = {"sensitivity": "Sens.", "specificity": "Spec.", "accuracy": "Acc.", "auc": "AUC", "avg": "AVG"}


@dataclass
class ArmSummary:
    """One arm's cross-validation figures, all in percent."""

    arm: str
    label: str
    per_fold: dict[int, dict[str, float]]  # fold -> metric -> value
    mean: dict[str, float]
    std: dict[str, float]  # sample standard deviation over folds (ddof=1)
    pooled_auc: float
    trainable_params: int
    peak_memory_mb: float
    films: int
    task: TaskSummary | None = None  # staged / multi-label arms: their own figures (binary: None)
    class_names: tuple[str, str] = BINARY_CLASSES  # the words of label 0 and label 1
    size: str | None = None  # size_name of the runs (tiny: the CPU stand-ins)
    calibration: CalibrationSummary | None = None  # Brier, ECE, slope, intercept (not in percent)


def summarise_arm(arm: ArmRuns, n_boot: int = 2000) -> ArmSummary:
    """Mean and sample std (ddof=1) over folds of each metric, and the pooled out-of-fold AUC; for a staged or
    multi-label arm also its task's figures (``task_summary``; ``n_boot`` resamples for their intervals); and its
    calibration per fold and pooled (``analysis.calibration``, with ``n_boot`` resamples too).

    Each fold's figures are its run's ``metrics.json``, which the run computed from the predictions it wrote with
    the same function (``training.prediction_metrics``) that gives the pooled figures here."""
    folds = sorted(arm.folds)
    per_fold = {f: {m: float(arm.folds[f].test[m]) for m in METRICS} for f in folds}
    values = {m: np.array([per_fold[f][m] for f in folds]) for m in METRICS}
    labels = np.array([p.label for p in arm.predictions])
    probs = np.array([p.prob for p in arm.predictions])
    return ArmSummary(
        arm=arm.arm, label=arm.label, per_fold=per_fold,
        mean={m: float(v.mean()) for m, v in values.items()},
        std={m: float(v.std(ddof=1)) if len(v) > 1 else float("nan") for m, v in values.items()},
        pooled_auc=pooled_auc(labels, probs),
        trainable_params=int(max(arm.folds[f].trainable_params or 0 for f in folds)),
        peak_memory_mb=float(max(arm.folds[f].peak_memory_mb or 0.0 for f in folds)),
        films=len(arm.predictions),
        task=_task_summary(arm, n_boot),
        class_names=arm.class_names, size=arm.size, calibration=arm_calibration(arm, n_boot=n_boot),
    )


def _task_summary(arm: ArmRuns, n_boot: int) -> TaskSummary | None:
    if arm.task == BINARY:
        return None
    from pneumollm.analysis.task_summary import summarise_task

    return summarise_task(arm, n_boot=n_boot)


def task_sections(summaries: list[ArmSummary]) -> list[str]:
    """summary.md's (and table.md's) sections of the staged or multi-label figures; none for binary arms."""
    labelled = [(s.label, s.task) for s in summaries if s.task is not None]
    if not labelled:
        return []
    from pneumollm.analysis.task_summary import markdown_sections

    return ["", *markdown_sections(labelled)]


def _task_csv(s: ArmSummary, fold: int | str) -> dict[str, float | str]:
    """The task metrics of one summary.csv row: a fold's, the mean or std over folds (with the pooled figure and
    its interval on the mean row)."""
    if s.task is None:
        return {}
    from pneumollm.analysis.task_summary import metric_names

    names = metric_names(s.task.task)
    if fold == "mean":
        values = {m: _number(s.task.mean[m]) for m in names}
        for m in names:
            interval = s.task.pooled[m]
            values |= {f"pooled_{m}": _number(interval.estimate), f"pooled_{m}_ci_low": _number(interval.low),
                       f"pooled_{m}_ci_high": _number(interval.high)}
        return values
    if fold == "std":
        return {m: _number(s.task.std[m]) for m in names}
    return {m: _number(s.task.per_fold[int(fold)][m]) for m in names}


def _task_fields(summaries: list[ArmSummary]) -> list[str]:
    tasks = [s.task for s in summaries if s.task is not None]
    if not tasks:
        return []
    from pneumollm.analysis.task_summary import metric_names

    names = metric_names(tasks[0].task)
    return [*names, *(f"pooled_{m}{end}" for m in names for end in ("", "_ci_low", "_ci_high"))]


def _fmt(value: float) -> str:
    return "–" if np.isnan(value) else f"{value:.2f}"


def in_order(summaries: list[ArmSummary], order: Sequence[str] | None) -> list[ArmSummary]:
    """``summaries`` sorted by the position of their arm id in ``order`` (arms it lacks last, as they came)."""
    if order is None:
        return list(summaries)
    rank = {arm: i for i, arm in enumerate(order)}
    return sorted(summaries, key=lambda s: rank.get(s.arm, len(rank)))


def _number(value: float) -> float | str:
    """A figure for the CSV: unrounded (written as the shortest text that reads back as the same float), so the
    formatted cells of the Markdown files and of ``pneumollm-compare`` agree to their last digit."""
    return "" if np.isnan(value) else float(value)


def summary_rows(summaries: list[ArmSummary], order: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Table rows: per-fold rows then a mean ± std row for every arm (in ``order`` of arm ids when given)."""
    rows = []
    for s in in_order(summaries, order):
        for fold, metrics in s.per_fold.items():
            rows.append({"arm": s.label, "fold": str(fold), **{HEADERS[m]: _fmt(metrics[m]) for m in METRICS},
                         "pooled AUC": ""})
        rows.append({"arm": s.label, "fold": "mean ± std",
                     **{HEADERS[m]: f"{_fmt(s.mean[m])} ± {_fmt(s.std[m])}" for m in METRICS},
                     "pooled AUC": _fmt(s.pooled_auc)})
    return rows


def summary_title(summaries: Sequence[ArmSummary]) -> str:
    """summary.md's title: the folds, the size of the arms (``size=tiny: CPU stand-ins``) and the classes."""
    folds = max((len(s.per_fold) for s in summaries), default=0)
    names = common_class_names(s.class_names for s in summaries)
    return (f"Summary: {folds}-fold cross-validation, {size_words(s.size for s in summaries)}, "
            f"{class_words(names)}")


def write_summary(summaries: list[ArmSummary], out_dir: str | Path,
                  order: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write ``summary.csv`` (machine-readable, one row per arm and fold) and ``summary.md``.

    ``order``: the arm ids in the order the files list them (e.g. ``report.table_arm_order``, the order of the
    table built beside the summary); by default the order of ``summaries``.
    """
    out_dir = Path(out_dir)
    summaries = in_order(summaries, order)
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    fields = ["arm", "label", "fold", *METRICS, "pooled_auc", "trainable_params", "peak_memory_mb",
              *_task_fields(summaries), *summary_fields()]

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            out = csv.DictWriter(handle, fieldnames=fields)
            out.writeheader()
            for s in summaries:
                common = {"arm": s.arm, "label": s.label, "trainable_params": s.trainable_params,
                          "peak_memory_mb": round(s.peak_memory_mb, 1)}
                for fold, metrics in s.per_fold.items():
                    out.writerow({**common, "fold": fold, **{m: _number(metrics[m]) for m in METRICS},
                                  "pooled_auc": "", **_task_csv(s, fold), **summary_values(s.calibration, fold)})
                out.writerow({**common, "fold": "mean", **{m: _number(s.mean[m]) for m in METRICS},
                              "pooled_auc": _number(s.pooled_auc), **_task_csv(s, "mean"),
                              **summary_values(s.calibration, "mean")})
                out.writerow({**common, "fold": "std", **{m: _number(s.std[m]) for m in METRICS}, "pooled_auc": "",
                              **_task_csv(s, "std"), **summary_values(s.calibration, "std")})

    atomic_write(csv_path, write_csv)
    rows = summary_rows(summaries)
    header = list(rows[0])
    names = common_class_names(s.class_names for s in summaries)
    lines = [f"# {summary_title(summaries)}", "", markdown_table(header, ([r[h] for h in header] for r in rows))]
    note = (f"\nAll figures in percent. Class 1: {names[1]}, class 0: {names[0]}; Sens. is the share of {names[1]} "
            f"films called {names[1]}, Spec. the share of {names[0]} films called {names[0]}, AUC that of "
            f"{probability_name(names)}. Per-fold figures on each fold's test patients; mean ± sample standard "
            "deviation (ddof=1) over folds; pooled AUC over all out-of-fold predictions together. Every figure is "
            "computed from the runs' predictions.csv files (docs/tables.md).")
    if any(s.task is not None for s in summaries):
        note += (f" Sens./Spec./Acc./AUC/AVG: 'any {names[1]}' (stage >= 1, or the primary finding) from "
                 "P(any), the sum of the stage >= 1 probabilities (or the primary finding's sigmoid).")
    atomic_write_text(md_path, "\n".join([*lines, note, *task_sections(summaries), *calibration_sections(summaries)])
                      + "\n")
    write_calibration_figures(summaries, out_dir, summary_title(summaries))
    return csv_path, md_path


def calibration_sections(summaries: Sequence[ArmSummary]) -> list[str]:
    """summary.md's (and table.md's) calibration section: each arm's pooled figures with intervals, mean ± std."""
    return markdown_section([(s.label, s.calibration) for s in summaries if s.calibration is not None])


def write_calibration_figures(summaries: Sequence[ArmSummary], out_dir: Path, title: str) -> list[Path]:
    """``calibration.png`` and ``decision_curve.png``/``.csv`` of the arms with a calibration summary."""
    arms = [(s.arm, s.label, s.calibration) for s in summaries if s.calibration is not None]
    if not arms:
        return []
    from pneumollm.analysis.calibration_figures import write_calibration_outputs

    return write_calibration_outputs(arms, out_dir, title, common_class_names(s.class_names for s in summaries))
