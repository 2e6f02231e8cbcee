"""Per-arm cross-validation summaries: per-fold rows, mean ± std over folds, pooled out-of-fold AUC."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumollm.analysis.auc import pooled_auc
from pneumollm.analysis.collect import ArmRuns
from pneumollm.utils.io import atomic_write, atomic_write_text
from pneumollm.utils.markdown import markdown_table

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


def summarise_arm(arm: ArmRuns) -> ArmSummary:
    """Mean and sample std (ddof=1) over folds of each metric, and the pooled out-of-fold AUC."""
    folds = sorted(arm.folds)
    per_fold = {f: {m: float(arm.folds[f][f"test/{m}"]) for m in METRICS} for f in folds}
    values = {m: np.array([per_fold[f][m] for f in folds]) for m in METRICS}
    labels = np.array([p.label for p in arm.predictions])
    probs = np.array([p.prob for p in arm.predictions])
    return ArmSummary(
        arm=arm.arm, label=arm.label, per_fold=per_fold,
        mean={m: float(v.mean()) for m, v in values.items()},
        std={m: float(v.std(ddof=1)) if len(v) > 1 else float("nan") for m, v in values.items()},
        pooled_auc=pooled_auc(labels, probs),
        trainable_params=int(max(arm.folds[f].get("trainable_params", 0) for f in folds)),
        peak_memory_mb=float(max(arm.folds[f].get("peak_memory_mb", 0.0) for f in folds)),
        films=len(arm.predictions),
    )


def _fmt(value: float) -> str:
    return "–" if np.isnan(value) else f"{value:.2f}"


def in_order(summaries: list[ArmSummary], order: Sequence[str] | None) -> list[ArmSummary]:
    """``summaries`` sorted by the position of their arm id in ``order`` (arms it lacks last, as they came)."""
    if order is None:
        return list(summaries)
    rank = {arm: i for i, arm in enumerate(order)}
    return sorted(summaries, key=lambda s: rank.get(s.arm, len(rank)))


def _number(value: float) -> float | str:
    return "" if np.isnan(value) else round(value, 4)


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


def write_summary(summaries: list[ArmSummary], out_dir: str | Path,
                  order: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write ``summary.csv`` (machine-readable, one row per arm and fold) and ``summary.md``.

    ``order``: the arm ids in the order the files list them (e.g. ``report.table_arm_order``, the order of the
    table built beside the summary); by default the order of ``summaries``.
    """
    out_dir = Path(out_dir)
    summaries = in_order(summaries, order)
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    fields = ["arm", "label", "fold", *METRICS, "pooled_auc", "trainable_params", "peak_memory_mb"]

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            out = csv.DictWriter(handle, fieldnames=fields)
            out.writeheader()
            for s in summaries:
                common = {"arm": s.arm, "label": s.label, "trainable_params": s.trainable_params,
                          "peak_memory_mb": round(s.peak_memory_mb, 1)}
                for fold, metrics in s.per_fold.items():
                    out.writerow({**common, "fold": fold, **{m: _number(metrics[m]) for m in METRICS},
                                  "pooled_auc": ""})
                out.writerow({**common, "fold": "mean", **{m: _number(s.mean[m]) for m in METRICS},
                              "pooled_auc": _number(s.pooled_auc)})
                out.writerow({**common, "fold": "std", **{m: _number(s.std[m]) for m in METRICS}, "pooled_auc": ""})

    atomic_write(csv_path, write_csv)
    rows = summary_rows(summaries)
    header = list(rows[0])
    lines = [markdown_table(header, ([r[h] for h in header] for r in rows))]
    note = ("\nAll figures in percent. Per-fold figures on each fold's test patients; mean ± sample standard "
            "deviation (ddof=1) over folds; pooled AUC over all out-of-fold predictions together.\n")
    atomic_write_text(md_path, "\n".join(lines) + "\n" + note)
    return csv_path, md_path
