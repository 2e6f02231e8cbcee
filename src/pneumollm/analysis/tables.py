"""Paper-style tables: per arm, our cross-validated figures with uncertainty, beside the paper's numbers."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from pneumollm.analysis.calibration import TABLE_COLUMNS as CALIBRATION_COLUMNS
from pneumollm.analysis.calibration import table_values as calibration_values
from pneumollm.analysis.collect import ArmRuns
from pneumollm.analysis.stats import Interval, bootstrap_auc_by_patient, paired_difference
from pneumollm.analysis.summary import METRICS, ArmSummary, calibration_sections, summarise_arm, task_sections
from pneumollm.analysis.task_summary import metric_names
from pneumollm.models.row_size import GB, RowSize
from pneumollm.utils.io import atomic_write, atomic_write_text
from pneumollm.utils.markdown import markdown_table

PAPER_METRICS = ("sensitivity", "specificity", "accuracy", "auc", "avg")


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's tables (numbers as reported; None where the paper gives none)."""

    table: str
    arm: str
    paper_row: str
    trainable_params_m: float | None
    memory_gb: float | None
    metrics: dict[str, float]


def _number(text: str) -> float | None:
    return float(text) if text.strip() else None


def load_paper_results(path: str | Path | None = None) -> list[PaperRow]:
    """The paper's reported numbers (our copy in ``analysis/data/paper_results.csv``)."""
    source = Path(path) if path else resources.files("pneumollm.analysis") / "data" / "paper_results.csv"
    with Path(str(source)).open(newline="", encoding="utf-8") as handle:
        return [PaperRow(r["table"], r["arm"], r["paper_row"], _number(r["trainable_params_M"]),
                         _number(r["memory_GB"]), {m: float(r[m]) for m in PAPER_METRICS})
                for r in csv.DictReader(handle)]


@dataclass
class TableRow:
    """Everything one arm contributes to a table."""

    summary: ArmSummary
    pooled_auc: Interval
    delta_avg: Interval | None  # against the reference arm, over paired folds
    delta_auc: Interval | None
    paper: PaperRow | None
    full_size: RowSize | None = None  # the row's configuration at full size (meta-device counts)
    is_reference: bool = False  # the arm the differences are taken against

    @property
    def full_size_trainable(self) -> int | None:
        return None if self.full_size is None else self.full_size.trainable


def _paired(summary: ArmSummary, reference: ArmSummary, metric: str) -> Interval:
    folds = sorted(set(summary.per_fold) & set(reference.per_fold))
    ours = [summary.per_fold[f][metric] for f in folds]
    return paired_difference(ours, [reference.per_fold[f][metric] for f in folds])


def paper_rows_of(table: str, paper: list[PaperRow]) -> dict[str, PaperRow]:
    """arm -> the paper's row of it that ``table`` shows: the table's own rows; for a table the paper lacks (a
    study beyond it, e.g. the backbone comparison), each arm's first row in the paper, with the L-para and memory
    of a later row where the first gives none."""
    own = {r.arm: r for r in paper if r.table == table}
    if own:
        return own
    first: dict[str, PaperRow] = {}
    for r in paper:
        known = first.get(r.arm)
        if known is None:
            first[r.arm] = r
        else:
            first[r.arm] = replace(known, trainable_params_m=known.trainable_params_m
                                   if known.trainable_params_m is not None else r.trainable_params_m,
                                   memory_gb=known.memory_gb if known.memory_gb is not None else r.memory_gb)
    return first


def build_rows(arms: list[ArmRuns], reference: str | None, table: str, n_boot: int = 2000,
               paper: list[PaperRow] | None = None,
               full_size: Callable[[str], RowSize | None] | None = None,
               summaries: dict[str, ArmSummary] | None = None) -> list[TableRow]:
    """Summaries, bootstrap intervals and paired differences for complete arms, in the given order.

    ``full_size`` maps an arm to its counts at full size (None: unknown). ``summaries``: the arms' summaries when
    already made with the same ``n_boot`` (made here otherwise). The paper's numbers: ``paper_rows_of``.
    """
    summaries = {a.arm: (summaries or {}).get(a.arm) or summarise_arm(a, n_boot=n_boot) for a in arms}
    paper_rows = paper_rows_of(table, paper if paper is not None else load_paper_results())
    ref = summaries.get(reference) if reference else None
    rows = []
    for arm in arms:
        s = summaries[arm.arm]
        preds = arm.predictions
        pooled = bootstrap_auc_by_patient([p.label for p in preds], [p.prob for p in preds],
                                          [p.patient_id for p in preds], n_boot=n_boot)
        delta_avg = delta_auc = None
        is_reference = ref is not None and arm.arm == ref.arm
        if ref is not None and not is_reference:
            delta_avg, delta_auc = _paired(s, ref, "avg"), _paired(s, ref, "auc")
        rows.append(TableRow(s, pooled, delta_avg, delta_auc, paper_rows.get(arm.arm),
                             full_size(arm.arm) if full_size else None, is_reference))
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _millions(count: int) -> str:
    """A parameter count in millions, four significant digits, never in exponent form (33 -> 0.000033)."""
    return np.format_float_positional(count / 1e6, precision=4, unique=True, fractional=False, trim="-")


def _mean_std(s: ArmSummary, metric: str) -> str:
    return f"{_fmt(s.mean[metric])} ± {_fmt(s.std[metric])}"


def _memory(s: ArmSummary) -> str:
    return f"{s.peak_memory_mb / 1024:.2f}" if s.peak_memory_mb else "–"


FULL_SIZE_COLUMNS = ("full-size L-para (M)", "full-size frozen (M)", "full-size frozen bf16 (GB)",
                     "full-size frozen nf4 (GB)")
COLUMNS = ("Arm", "L-para (M)", "Mem (GB)", "Sens.", "Spec.", "Acc.", "AUC", "AVG", "pooled AUC [95% CI]",
           "ΔAVG [95% CI]", "ΔAUC [95% CI]", *FULL_SIZE_COLUMNS,
           "paper L-para (M)", "paper Mem (GB)", "paper Sens.", "paper Spec.",
           "paper Acc.", "paper AUC", "paper AVG")


def _gb(count: int | None) -> str:
    return "–" if count is None else f"{count / GB:.2f}"


def full_size_cells(size: RowSize | None) -> list[str]:
    """The ``FULL_SIZE_COLUMNS`` cells of a row's full-size counts ("–" where a count does not exist)."""
    if size is None:
        return ["–"] * len(FULL_SIZE_COLUMNS)
    return [_millions(size.trainable), _millions(size.frozen), _gb(size.frozen_bf16_bytes), _gb(size.frozen_nf4_bytes)]


def row_cells(row: TableRow) -> list[str]:
    """The cells of one table row, in ``COLUMNS`` order."""
    s, paper = row.summary, row.paper
    cells = [s.label, _millions(s.trainable_params), _memory(s)]
    cells += [_mean_std(s, m) for m in METRICS]
    no_delta = "ref" if row.is_reference else "–"
    cells += [row.pooled_auc.format(), row.delta_avg.format() if row.delta_avg else no_delta,
              row.delta_auc.format() if row.delta_auc else no_delta, *full_size_cells(row.full_size)]
    if paper is None:
        cells += ["–"] * 7
    else:
        cells += ["–" if paper.trainable_params_m is None else f"{paper.trainable_params_m:g}", _fmt(paper.memory_gb)]
        cells += [_fmt(paper.metrics[m]) for m in PAPER_METRICS]
    return cells


def has_paper_numbers(rows: list[TableRow]) -> bool:
    """Whether the paper reports numbers for any row (its figures 6a/6b are plots only)."""
    return any(r.paper is not None for r in rows)


def _interval_columns(name: str) -> tuple[str, str, str]:
    return name, f"{name}_ci_low", f"{name}_ci_high"


# table.csv: numbers only, one column per quantity; an empty cell is a number that does not exist (the reference
# arm's own differences, a std over a single fold, a count that could not be made, a number the paper lacks).
CSV_COLUMNS = (
    "arm", "label", "trainable_params", "peak_memory_gb",
    *(f"{m}_{stat}" for m in METRICS for stat in ("mean", "std")),
    *_interval_columns("pooled_auc"), *_interval_columns("delta_avg"), *_interval_columns("delta_auc"),
    "full_size_trainable_params", "full_size_frozen_params", "full_size_frozen_bf16_gb", "full_size_frozen_nf4_gb",
    "paper_trainable_params_m", "paper_memory_gb",
    *(f"paper_{m}" for m in PAPER_METRICS),
    *CALIBRATION_COLUMNS,  # brier, ece, calibration_slope, calibration_intercept: _mean, _std, _pooled (+ interval)
)


def _number_or_empty(value: float | None) -> float | str:
    """A number for table.csv, unrounded (the shortest text that reads back as the same float), so the formatted
    cells of table.md and of ``pneumollm-compare`` agree to their last digit."""
    if value is None or np.isnan(value):
        return ""
    return float(value)


def _interval_values(name: str, interval: Interval | None) -> dict[str, float | str]:
    parts = (None, None, None) if interval is None else (interval.estimate, interval.low, interval.high)
    return {column: _number_or_empty(v) for column, v in zip(_interval_columns(name), parts)}


def row_values(row: TableRow) -> dict[str, int | float | str]:
    """One row of ``table.csv``: ``CSV_COLUMNS`` to numbers (ids and label as text, "" where none exists)."""
    s, paper = row.summary, row.paper
    values: dict[str, int | float | str] = {
        "arm": s.arm, "label": s.label, "trainable_params": int(s.trainable_params),
        "peak_memory_gb": _number_or_empty(s.peak_memory_mb / 1024) if s.peak_memory_mb else "",
    }
    for m in METRICS:
        values[f"{m}_mean"], values[f"{m}_std"] = _number_or_empty(s.mean[m]), _number_or_empty(s.std[m])
    values |= _interval_values("pooled_auc", row.pooled_auc)
    values |= _interval_values("delta_avg", row.delta_avg) | _interval_values("delta_auc", row.delta_auc)
    size = row.full_size
    values["full_size_trainable_params"] = "" if size is None else int(size.trainable)
    values["full_size_frozen_params"] = "" if size is None else int(size.frozen)
    values["full_size_frozen_bf16_gb"] = "" if size is None else size.frozen_bf16_bytes / GB
    nf4 = None if size is None else size.frozen_nf4_bytes
    values["full_size_frozen_nf4_gb"] = "" if nf4 is None else nf4 / GB
    values["paper_trainable_params_m"] = _number_or_empty(paper.trainable_params_m if paper else None)
    values["paper_memory_gb"] = _number_or_empty(paper.memory_gb if paper else None)
    for m in PAPER_METRICS:
        values[f"paper_{m}"] = _number_or_empty(paper.metrics[m] if paper else None)
    return values | calibration_values(s.calibration)


def task_csv_columns(rows: list[TableRow]) -> list[str]:
    """table.csv's columns of a staged or multi-label table (after ``CSV_COLUMNS``): each task metric's mean and
    std over folds and its pooled figure with the interval; none for a binary table."""
    tasks = [r.summary.task for r in rows if r.summary.task is not None]
    if not tasks:
        return []
    return [f"{m}_{stat}" for m in metric_names(tasks[0].task)
            for stat in ("mean", "std", "pooled", "pooled_ci_low", "pooled_ci_high")]


def task_values(row: TableRow) -> dict[str, float | str]:
    """One row's ``task_csv_columns`` values."""
    t = row.summary.task
    if t is None:
        return {}
    values: dict[str, float | str] = {}
    for m in metric_names(t.task):
        pooled = t.pooled[m]
        values |= {f"{m}_mean": _number_or_empty(t.mean[m]), f"{m}_std": _number_or_empty(t.std[m]),
                   f"{m}_pooled": _number_or_empty(pooled.estimate),
                   f"{m}_pooled_ci_low": _number_or_empty(pooled.low),
                   f"{m}_pooled_ci_high": _number_or_empty(pooled.high)}
    return values


def write_table(rows: list[TableRow], out_dir: str | Path, title: str, notes: list[str]) -> tuple[Path, Path]:
    """Write ``table.md`` (formatted cells, ``COLUMNS``) and ``table.csv`` (numbers, ``CSV_COLUMNS``), one row per
    arm in the order of ``rows``."""
    out_dir = Path(out_dir)
    md_path, csv_path = out_dir / "table.md", out_dir / "table.csv"
    body = [[*row_cells(r)] for r in rows]
    # The csv keeps every column; the markdown leaves out the paper's columns when it gives no numbers (figures).
    hidden = set()
    if not has_paper_numbers(rows):
        hidden |= {c for c in COLUMNS if c.startswith("paper ")}
    if all(r.full_size is None for r in rows):
        hidden |= set(FULL_SIZE_COLUMNS)
    elif all(r.full_size is None or r.full_size.frozen_nf4_bytes is None for r in rows):
        hidden.add("full-size frozen nf4 (GB)")  # no row has an LLM trunk to quantise
    shown = [i for i, c in enumerate(COLUMNS) if c not in hidden]
    table = markdown_table([COLUMNS[i] for i in shown], ([cells[i] for i in shown] for cells in body))
    lines = [f"# {title}", "", table]
    summaries = [r.summary for r in rows]
    atomic_write_text(md_path, "\n".join([*lines, "", *notes, *task_sections(summaries),
                                         *calibration_sections(summaries)]) + "\n")
    task_columns = task_csv_columns(rows)

    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            out = csv.DictWriter(handle, fieldnames=[*CSV_COLUMNS, *task_columns])
            out.writeheader()
            out.writerows(row_values(r) | task_values(r) for r in rows)

    atomic_write(csv_path, writer)
    return md_path, csv_path
