"""Aggregating a study: the summary of its fold runs and, for a paper table, the table and its figures, written
as one output set and skipped when nothing they are made from changed. ``pneumollm-aggregate``
(``pneumollm.cli.aggregate``) calls ``aggregate_study`` once per study and prints what it recorded."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumollm.analysis.calibration import CALIBRATION_METRICS, HEADERS, pooled_cell
from pneumollm.analysis.collect import RUNS_SUBDIR, collect_runs, run_dirs_under, split_complete
from pneumollm.analysis.summary import in_order, summarise_arm, summary_rows, write_summary
from pneumollm.training import calibration_metrics, prediction_metrics
from pneumollm.training.run_folder import RunFolder
from pneumollm.utils.io import output_set, read_output_set, sha256_file, sha256_json

if TYPE_CHECKING:
    from pneumollm.analysis.report import TableReport

AGGREGATE_SET = "aggregate"
_RUN_INPUTS = ("metrics.json", "predictions.csv", "features.npz", "config.yaml", "job.json", "failed.json")


@dataclass(frozen=True)
class AggregateOptions:
    """How a study is aggregated (``pneumollm-aggregate``'s options of the same names)."""

    num_folds: int = 5  # folds every arm must have
    partial: bool = False  # summarise complete arms and list incomplete ones instead of refusing
    table: str | None = None  # also build this paper table/figure and its figures (e.g. table6)
    reference: str | None = None  # arm the paired differences are taken against
    bootstrap: int = 2000  # bootstrap resamples for the pooled-AUC interval
    by: str | None = None  # also split the results by this manifest column
    force: bool = False  # remake the outputs even when nothing changed

    @classmethod
    def of(cls, namespace: Any) -> AggregateOptions:
        """The options of an ``argparse.Namespace`` (or any object) carrying them as attributes."""
        return cls(**{f.name: getattr(namespace, f.name) for f in fields(cls)})


@dataclass
class Aggregation:
    """What aggregating one study left: where, what it recorded (``meta``: the summary rows, incomplete arms,
    task tables and the table's cells), whether the previous outputs were kept, and the table's report when one
    was made now."""

    runs_dir: Path
    out_dir: Path
    meta: dict
    kept: bool = False
    report: TableReport | None = None


def inputs_key(runs_dir: Path, options: AggregateOptions) -> str:
    """What a study's summary, table and figures are made from: every run file's size and time, the prepared
    cohorts' indexes the film panel reads, the options, and the analysis code."""
    files, cohorts = [], set()
    for run_dir in run_dirs_under(runs_dir):
        for name in _RUN_INPUTS:
            path = run_dir / name
            if path.is_file():
                stat = path.stat()
                files.append((str(path.relative_to(runs_dir)), stat.st_size, stat.st_mtime_ns))
        metrics = RunFolder(run_dir).metrics()  # None: no metrics yet, no cohort to read for the panel
        if metrics is not None:
            cohorts.add(metrics.cohort_folder or "")
    for folder in sorted(c for c in cohorts if c):
        index = Path(folder) / "cohort.csv"
        if index.is_file():
            files.append((str(index), index.stat().st_size, index.stat().st_mtime_ns))
    code_dir = Path(__file__).resolve().parent
    figures = [Path(m.__file__) for m in (prediction_metrics, calibration_metrics)]  # every figure's one function
    code = {p.name: sha256_file(p) for p in sorted([*code_dir.glob("*.py"), *code_dir.glob("data/*"), *figures])}
    chosen = {k: getattr(options, k) for k in ("num_folds", "partial", "table", "reference", "bootstrap", "by")}
    return sha256_json({"files": files, "code": code, "options": chosen})[:24]


def aggregate_study(study: Path, out_dir: Path, options: AggregateOptions) -> Aggregation:
    """Summarise one study into ``out_dir``: summary files and, with ``options.table``, the table and its figures,
    replaced together (a failure leaves the previous set as it was). When nothing they are made from changed
    since the last aggregation (``inputs_key``), the outputs stand (``kept``; ``options.force`` remakes them).
    Raises ``AggregationError`` for runs that cannot be aggregated."""
    runs_dir = study / RUNS_SUBDIR if (study / RUNS_SUBDIR).is_dir() else study
    if study.name == RUNS_SUBDIR and out_dir == study:
        out_dir = study.parent
    key = inputs_key(runs_dir, options)
    members, meta = read_output_set(out_dir, AGGREGATE_SET)
    if not options.force and meta and meta.get("key") == key and all((out_dir / m).is_file() for m in members):
        return Aggregation(runs_dir, out_dir, meta, kept=True)
    report = None
    if options.table:  # tables and figures need matplotlib and scikit-learn's t-SNE; a summary does not
        from pneumollm.analysis.report import aggregate_table, table_arm_order
    arms = collect_runs(runs_dir)
    complete_arms, incomplete = split_complete(arms, options.num_folds, options.partial, runs_dir)
    complete = [summarise_arm(arm, n_boot=options.bootstrap) for arm in complete_arms.values()]
    order = table_arm_order(complete_arms, options.table) if options.table else None
    rows = summary_rows(complete, order=order)  # stored as lists: the manifest's JSON sorts dict keys
    meta = {"key": key, "summary_columns": list(rows[0]), "summary_rows": [list(r.values()) for r in rows],
            "incomplete": incomplete, "task_tables": task_tables(complete, order),
            "calibration": calibration_table(complete, order)}
    with output_set(out_dir, AGGREGATE_SET, meta=meta) as stage:
        write_summary(complete, stage, order=order)
        if options.by:
            from pneumollm.analysis.subgroups import subgroup_rows, write_subgroups

            ordered = [complete_arms[name] for name in (order or list(complete_arms))]
            write_subgroups(subgroup_rows(ordered, options.by, n_boot=options.bootstrap), options.by, stage)
            meta["by"] = options.by
        if options.table:
            report = aggregate_table(runs_dir, stage, options.table, reference=options.reference,
                                     num_folds=options.num_folds, partial=options.partial, n_boot=options.bootstrap,
                                     use_wandb=False, arms=arms, summaries={s.arm: s for s in complete})
            meta["table"] = {"title": report.table_md.read_text().splitlines()[0].lstrip("# "),
                             "cells": report.cells, "has_paper": report.has_paper,
                             "figures": [f.name for f in report.figures]}
    report = report.moved(stage, out_dir) if report is not None else None
    return Aggregation(runs_dir, out_dir, meta, report=report)


def calibration_table(summaries: list, order: list[str] | None) -> dict | None:
    """The pooled calibration figures of each arm with their intervals, for the console (as summary.md shows them)."""
    shown = [s for s in in_order(summaries, order) if s.calibration is not None]
    if not shown:
        return None
    return {"columns": ["arm", *(f"{HEADERS[m]} [95% CI]" for m in CALIBRATION_METRICS)],
            "rows": [[s.arm, *(pooled_cell(s.calibration, m) for m in CALIBRATION_METRICS)] for s in shown]}


def task_tables(summaries: list, order: list[str] | None) -> list[dict]:
    """The staged / multi-label figures as console tables (title, columns, rows); none for binary arms."""
    labelled = [(s.label, s.task) for s in in_order(summaries, order) if s.task is not None]
    if not labelled:
        return []
    from pneumollm.analysis.task_summary import MULTICLASS, headline_rows, output_rows

    what = "staged" if labelled[0][1].task.task == MULTICLASS else "multi-label"
    tables = []
    for title, rows in ((f"{what} figures (% except κ)", headline_rows(labelled)),
                        (f"{what} figures per output (%)", output_rows(labelled))):
        columns = list(rows[0])
        tables.append({"title": title, "columns": columns, "rows": [[r.get(c, "") for c in columns] for r in rows]})
    return tables
