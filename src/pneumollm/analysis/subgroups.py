"""Results split by one of the cohort's own columns (``pneumollm-aggregate --by site``): per arm and value, the
pooled out-of-fold sensitivity, specificity and accuracy at each run's threshold and the pooled AUC with its
95 % patient-level bootstrap interval, so a reader sees whether an arm holds up at every site or scanner."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumollm.analysis.auc import binary_metrics
from pneumollm.analysis.collect import AggregationError, ArmRuns, run_thresholds
from pneumollm.analysis.stats import bootstrap_auc_by_patient
from pneumollm.utils.io import atomic_write, atomic_write_text
from pneumollm.utils.markdown import markdown_table

COLUMNS = ("arm", "label", "value", "films", "patients", "positive_films", "sensitivity", "specificity",
           "accuracy", "pooled_auc", "pooled_auc_ci_low", "pooled_auc_ci_high")
MISSING = "(none)"


def subgroup_rows(arms: Sequence[ArmRuns], column: str, n_boot: int = 2000) -> list[dict[str, object]]:
    """One row per arm and value of ``column`` (films without it: ``(none)``), in the arms' order."""
    if not any(column in p.extra for arm in arms for p in arm.predictions):
        known = sorted({k for arm in arms for p in arm.predictions for k in p.extra})
        raise AggregationError(f"no prediction has a column {column!r} to split by; the runs' predictions carry "
                               f"{', '.join(known) or 'no extra columns'} (a manifest's own columns are kept)")
    rows = []
    for arm in arms:
        thresholds = run_thresholds(arm)
        groups: dict[str, list] = defaultdict(list)
        for p in arm.predictions:
            groups[p.extra.get(column) or MISSING].append(p)
        for value in sorted(groups):
            preds = groups[value]
            y = np.array([p.label for p in preds])
            probs = [p.prob for p in preds]
            figures = binary_metrics(y, probs, [thresholds.get(p.fold, 0.5) for p in preds])
            auc = bootstrap_auc_by_patient(y.tolist(), probs, [p.patient_id for p in preds], n_boot=n_boot)
            rows.append({"arm": arm.arm, "label": arm.label, "value": value, "films": len(preds),
                         "patients": len({p.patient_id for p in preds}), "positive_films": int(y.sum()),
                         **{m: figures[m] for m in ("sensitivity", "specificity", "accuracy")},
                         "pooled_auc": auc.estimate, "pooled_auc_ci_low": auc.low, "pooled_auc_ci_high": auc.high})
    return rows


def write_subgroups(rows: list[dict[str, object]], column: str, out_dir: Path) -> tuple[Path, Path]:
    """``by_<column>.csv`` (numbers, empty where undefined) and ``by_<column>.md`` (formatted)."""
    csv_path, md_path = out_dir / f"by_{column}.csv", out_dir / f"by_{column}.md"

    def number(value: object) -> str:  # figures unrounded: the shortest text that reads back as the same float
        return "" if isinstance(value, float) and np.isnan(value) else repr(float(value)) if isinstance(value, float) \
            else str(value)

    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(COLUMNS)
            out.writerows([number(row[c]) for c in COLUMNS] for row in rows)

    atomic_write(csv_path, writer)

    def shown(value: object) -> str:
        return "–" if isinstance(value, float) and np.isnan(value) else f"{value:.2f}" if isinstance(value, float) \
            else str(value)

    header = ["Arm", column, "Films", "Patients", "Sens.", "Spec.", "Acc.", "pooled AUC [95% CI]"]
    body = []
    for row in rows:
        auc = "–" if np.isnan(row["pooled_auc"]) else (f"{row['pooled_auc']:.2f} [{row['pooled_auc_ci_low']:.2f}, "
                                                         f"{row['pooled_auc_ci_high']:.2f}]")
        body.append([row["label"], row["value"], row["films"], row["patients"], shown(row["sensitivity"]),
                     shown(row["specificity"]), shown(row["accuracy"]), auc])
    lines = [f"# Results by {column}", "", markdown_table(header, body)]
    lines += ["", "Pooled over all folds' test films with the value; sensitivity, specificity and accuracy at each "
                  "run's threshold; AUC with a 95% percentile bootstrap interval resampling patients. Figures in "
                  "percent; – where a class is absent."]
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path
