"""Comparing two studies' tables side by side per arm (e.g. tiny vs full size, or two cohorts), or two arms of one
study: each metric in A, in B and B − A, as rows, a Markdown file or a CSV file. ``pneumollm-compare``
(``pneumollm.cli.compare``) reads the options and prints the comparison."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from pneumollm.analysis.collect import RUNS_SUBDIR
from pneumollm.errors import UserError
from pneumollm.utils.io import atomic_write, atomic_write_text
from pneumollm.utils.markdown import markdown_table

TABLE_FILE, SUMMARY_FILE = "table.csv", "summary.csv"
DEFAULT_METRICS = ("sensitivity", "specificity", "accuracy", "auc", "avg")
ALIASES = {"sens": "sensitivity", "spec": "specificity", "acc": "accuracy", "pooled": "pooled_auc",
           "params": "trainable_params", "l-para": "trainable_params"}
HEADERS = {"sensitivity": "Sens.", "specificity": "Spec.", "accuracy": "Acc.", "auc": "AUC", "avg": "AVG",
           "pooled_auc": "pooled AUC", "delta_avg": "ΔAVG", "delta_auc": "ΔAUC", "trainable_params": "L-para",
           "peak_memory_gb": "Mem (GB)", "full_size_trainable_params": "full-size L-para"}


class CompareError(UserError, ValueError):
    """A study folder without a table, an unknown metric, an output file of an unknown kind."""


@dataclass
class StudyTable:
    """One study's per-arm numbers, from its table.csv or summary.csv."""

    source: Path
    title: str
    arms: list[str] = field(default_factory=list)  # arm ids in the file's order
    labels: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, float | None]] = field(default_factory=dict)  # arm -> column -> number
    name: str = ""  # what the comparison calls it (default: the study folder's name)

    @property
    def display_name(self) -> str:
        return self.name or self.source.parent.name


def _float(text: str | None) -> float | None:
    if text is None or not text.strip() or text.strip().lower() == "nan":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _title(folder: Path) -> str:
    """The first line of the folder's table.md (its title), or ''."""
    path = folder / "table.md"
    if not path.is_file():
        return ""
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0].lstrip("# ").strip() if lines else ""


def _read_table(path: Path) -> StudyTable:
    study = StudyTable(path, _title(path.parent))
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            arm = row["arm"]
            study.arms.append(arm)
            study.labels[arm] = row.get("label") or arm
            study.values[arm] = {k: _float(v) for k, v in row.items() if k not in ("arm", "label")}
    return study


def _read_summary(path: Path) -> StudyTable:
    study = StudyTable(path, "summary (no table)")
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            arm, fold = row["arm"], row["fold"]
            if arm not in study.values:
                study.arms.append(arm)
                study.labels[arm] = row.get("label") or arm
                study.values[arm] = {}
            values = study.values[arm]
            if fold in ("mean", "std"):
                values |= {f"{m}_{fold}": _float(row.get(m)) for m in DEFAULT_METRICS}
            if fold == "mean":
                values |= {k: _float(row.get(k)) for k in ("pooled_auc", "trainable_params", "peak_memory_mb")}
    return study


def _numeric_table(path: Path) -> bool:
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    return "auc_mean" in header


def read_study(path: str | Path) -> StudyTable:
    """A study's table: ``table.csv`` of the folder (or the file given), else its ``summary.csv``."""
    path = Path(path)
    if path.is_file():
        folder, candidates = path.parent, [path]
    elif path.is_dir():
        folder, candidates = path, [path / TABLE_FILE, path / SUMMARY_FILE]
    else:
        raise CompareError(f"{path}: no such folder or file")
    for candidate in candidates:
        if not candidate.is_file():
            continue
        if candidate.name == SUMMARY_FILE:
            return _read_summary(candidate)
        if _numeric_table(candidate):
            return _read_table(candidate)
    studies = sorted(p.parent.name for p in folder.glob(f"*/{TABLE_FILE}")) if path.is_dir() else []
    study = _study_of_arm_folder(folder) if path.is_dir() else None
    if studies:
        hint = f"; it holds several studies, pass one of them: {', '.join(studies)}"
    elif study is not None:
        hint = (f"; it is {'the runs folder' if folder.name == RUNS_SUBDIR else 'an arm folder'} of the study "
                f"{study}: pass the study (aggregated with pneumollm-aggregate {study}), or compare two of its "
                f"arms with pneumollm-compare {study} --arms A,B")
    else:
        hint = f"; run pneumollm-aggregate {folder} (with --table TABLE for table.csv) first"
    raise CompareError(f"{path}: no {TABLE_FILE} with numeric columns (pneumollm-aggregate --table) "
                       f"and no {SUMMARY_FILE}{hint}")


def _study_of_arm_folder(folder: Path) -> Path | None:
    """The study that ``folder`` belongs to when it is an arm folder (``<study>/[runs/]<arm>``, holding
    ``fold<k>/`` runs) or a study's ``runs/`` folder; else None."""
    if folder.name == RUNS_SUBDIR and any(folder.glob("*/fold*/")):
        return folder.parent
    if any(folder.glob("fold*/")):
        return folder.parent.parent if folder.parent.name == RUNS_SUBDIR else folder.parent
    return None


def arm_tables(study: StudyTable, arms: list[str]) -> tuple[StudyTable, StudyTable]:
    """Two arms of one study as the A and B of a comparison: one row, the arms' names joined ("b vs a")."""
    if len(arms) != 2:
        raise CompareError(f"--arms takes two arms of the study, A,B (got {len(arms)}: {', '.join(arms)})")
    found = []
    for wanted in arms:
        match = next((a for a in study.arms if wanted.lower() in (a.lower(), study.labels[a].lower())), None)
        if match is None:
            listing = ", ".join(a if study.labels[a] == a else f"{a} ({study.labels[a]})" for a in study.arms)
            raise CompareError(f"--arms: {wanted!r} is not an arm of {study.source}; its arms are {listing}")
        found.append(match)
    row = f"{study.labels[found[1]]} vs {study.labels[found[0]]}"
    return tuple(StudyTable(study.source, f"arm {arm}" + (f" of {study.title}" if study.title else ""), [row],
                            {row: row}, {row: study.values[arm]}, name=arm) for arm in found)  # type: ignore[return-value]


def _column(metric: str, studies: list[StudyTable]) -> str:
    """The column holding ``metric``: ``<metric>_mean`` where the tables have one, else ``<metric>``."""
    present = {c for s in studies for values in s.values.values() for c in values}
    for column in (f"{metric}_mean", metric):
        if column in present:
            return column
    names = sorted({c.removesuffix("_mean") for c in present if not c.endswith(("_std", "_ci_low", "_ci_high"))})
    raise CompareError(f"unknown metric {metric!r}; the tables have: {', '.join(names)}")


@dataclass
class Comparison:
    """Rows of the side-by-side table: per arm, each metric in A, in B and B − A."""

    a: StudyTable
    b: StudyTable
    metrics: list[str]
    columns: list[str]
    rows: list[tuple[str, str, list[tuple[float | None, float | None, float | None]]]]  # arm, label, cells


def compare(a: StudyTable, b: StudyTable, metrics: list[str]) -> Comparison:
    """The arms of A in A's order, then those only B has, in B's order; a missing number stays None."""
    metrics = [ALIASES.get(m.lower(), m.lower()) for m in metrics]
    columns = [_column(m, [a, b]) for m in metrics]
    rows = []
    for arm in [*a.arms, *(x for x in b.arms if x not in a.values)]:
        cells = []
        for column in columns:
            va = a.values.get(arm, {}).get(column)
            vb = b.values.get(arm, {}).get(column)
            cells.append((va, vb, None if va is None or vb is None else vb - va))
        rows.append((arm, a.labels.get(arm) or b.labels.get(arm, arm), cells))
    return Comparison(a, b, metrics, columns, rows)


def _fmt(value: float | None, count: bool = False, signed: bool = False) -> str:
    """A number as the table shows it: counts whole with thousands separators, others with two decimals."""
    if value is None:
        return "–"
    digits = 0 if count else 2
    value = round(value, digits) + 0.0  # no "-0.00" for a difference lost in rounding
    sign = "+" if signed and value != 0 else ""
    return f"{value:{sign},.{digits}f}" if count else f"{value:{sign}.{digits}f}"


def header_cells(comparison: Comparison) -> list[str]:
    """The column headers: Arm, then per metric its value in A, in B, and B − A."""
    cells = ["Arm"]
    for metric in comparison.metrics:
        name = HEADERS.get(metric, metric)
        cells += [f"{name} A", f"{name} B", f"{name} B−A"]
    return cells


def body_cells(comparison: Comparison) -> list[list[str]]:
    """The formatted rows: the arm's label, then per metric A, B and B − A."""
    counts = [column.endswith("params") for column in comparison.columns]
    return [[label, *(text for (va, vb, d), count in zip(cells, counts)
                      for text in (_fmt(va, count), _fmt(vb, count), _fmt(d, count, signed=True)))]
            for _, label, cells in comparison.rows]


def legend(comparison: Comparison) -> list[str]:
    """Where A and B come from (and the tables' titles)."""
    return [f"{name} = {s.source}" + (f" ({s.title})" if s.title else "")
            for name, s in (("A", comparison.a), ("B", comparison.b))]


def write_markdown(comparison: Comparison, path: Path) -> Path:
    header = header_cells(comparison)
    lines = [f"# {comparison.a.display_name} (A) vs {comparison.b.display_name} (B)", "",
             *(f"- {line}" for line in legend(comparison)), "",
             markdown_table(header, body_cells(comparison))]
    lines += ["", "Means over folds (pooled figures as they are), in percent unless a count; B−A: B minus A."]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_csv(comparison: Comparison, path: Path) -> Path:
    fields = ["arm", "label", *(f"{m}_{side}" for m in comparison.metrics for side in ("a", "b", "diff"))]

    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(fields)
            for arm, label, cells in comparison.rows:
                out.writerow([arm, label, *("" if v is None else v for c in cells for v in c)])  # unrounded

    return atomic_write(path, writer)
