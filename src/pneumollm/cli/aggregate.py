"""``pneumollm-aggregate``: summarise the fold runs of an experiment folder into a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pneumollm.analysis.collect import (
    RUNS_SUBDIR,
    AggregationError,
    collect_runs,
    find_studies,
    run_dirs_under,
    split_complete,
)
from pneumollm.analysis.summary import summarise_arm, summary_rows, write_summary
from pneumollm.utils.console import make_console, rule
from pneumollm.utils.io import output_set, read_output_set


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumollm-aggregate",
        description="Summarise <study>/<arm>/fold<k>/ runs (or <study>/runs/<arm>/fold<k>/): per-fold rows, "
                    "mean ± std, pooled AUC. A folder holding several studies (e.g. results/table6 with one "
                    "folder per cohort) is summarised study by study.",
    )
    parser.add_argument("experiment_dir", type=Path,
                        help="a study folder, or a folder of studies (e.g. outputs/demo or results/table6)")
    parser.add_argument("--num-folds", type=int, default=5, help="folds every arm must have (default 5)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write summary.csv and summary.md (default: experiment_dir)")
    parser.add_argument("--partial", action="store_true",
                        help="summarise complete arms and list incomplete ones instead of refusing")
    parser.add_argument("--table", default=None,
                        help="also build the paper-style table and figures of this table/figure (e.g. table6)")
    parser.add_argument("--reference", default=None, help="arm the paired differences are taken against")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the pooled-AUC interval")
    parser.add_argument("--by", default=None, metavar="COLUMN",
                        help="also split the results by one of the cohort's own columns (e.g. site): by_COLUMN.md/csv")
    parser.add_argument("--no-wandb", action="store_true", help="do not write the W&B aggregate run")
    parser.add_argument("--force", action="store_true",
                        help="remake the outputs even when no run and no option changed since the last aggregation")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = make_console(stderr=False)
    try:
        studies = find_studies(args.experiment_dir)
    except AggregationError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        return 2
    if not studies:
        console.print(f"[red]error:[/red] {args.experiment_dir}: no runs found (no */fold*/metrics.json)",
                      highlight=False)
        return 2
    codes = []
    for study in studies:
        if len(studies) > 1:
            rule(console, str(study))
        out_dir = args.out / study.name if args.out and len(studies) > 1 else args.out or study
        codes.append(aggregate_study(study, out_dir, args, console))
    return max(codes)


AGGREGATE_SET = "aggregate"
_RUN_INPUTS = ("metrics.json", "predictions.csv", "features.npz", "config.yaml", "job.json", "failed.json")


def inputs_key(runs_dir: Path, args: argparse.Namespace) -> str:
    """What a study's summary, table and figures are made from: every run file's size and time, the prepared
    cohorts' indexes the film panel reads, the options, and the analysis code."""
    from pneumollm.training.run_folder import RunFolder
    from pneumollm.utils.io import sha256_file, sha256_json

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
    code_dir = Path(__file__).resolve().parents[1] / "analysis"
    code = {p.name: sha256_file(p) for p in sorted([*code_dir.glob("*.py"), *code_dir.glob("data/*"),
                                                   Path(__file__)])}
    options = {k: getattr(args, k) for k in ("num_folds", "partial", "table", "reference", "bootstrap", "by")}
    return sha256_json({"files": files, "code": code, "options": options})[:24]


def aggregate_study(study: Path, out_dir: Path, args: argparse.Namespace, console: Console) -> int:
    """Summarise one study into ``out_dir``: summary files and, with ``--table``, the table and its figures,
    replaced together (a failure leaves the previous set as it was). When nothing they are made from changed
    since the last aggregation (``inputs_key``), the outputs stand and are only shown (``--force`` remakes them)."""
    runs_dir = study / RUNS_SUBDIR if (study / RUNS_SUBDIR).is_dir() else study
    if study.name == RUNS_SUBDIR and out_dir == study:
        out_dir = study.parent
    key = inputs_key(runs_dir, args)
    members, meta = read_output_set(out_dir, AGGREGATE_SET)
    if not args.force and meta and meta.get("key") == key and all((out_dir / m).is_file() for m in members):
        show(console, runs_dir, out_dir, meta, args, kept=True)
        return 0
    report = None
    if args.table:  # tables and figures need matplotlib and scikit-learn's t-SNE; a summary does not
        from pneumollm.analysis.report import aggregate_table, log_table_to_wandb, table_arm_order
    try:
        arms = collect_runs(runs_dir)
        complete_arms, incomplete = split_complete(arms, args.num_folds, args.partial, runs_dir)
        complete = [summarise_arm(arm, n_boot=args.bootstrap) for arm in complete_arms.values()]
        order = table_arm_order(complete_arms, args.table) if args.table else None
        rows = summary_rows(complete, order=order)  # stored as lists: the manifest's JSON sorts dict keys
        meta = {"key": key, "summary_columns": list(rows[0]), "summary_rows": [list(r.values()) for r in rows],
                "incomplete": incomplete, "task_tables": task_tables(complete, order)}
        with output_set(out_dir, AGGREGATE_SET, meta=meta) as stage:
            write_summary(complete, stage, order=order)
            if args.by:
                from pneumollm.analysis.subgroups import subgroup_rows, write_subgroups

                ordered = [complete_arms[name] for name in (order or list(complete_arms))]
                write_subgroups(subgroup_rows(ordered, args.by, n_boot=args.bootstrap), args.by, stage)
                meta["by"] = args.by
            if args.table:
                report = aggregate_table(runs_dir, stage, args.table, reference=args.reference,
                                         num_folds=args.num_folds, partial=args.partial, n_boot=args.bootstrap,
                                         use_wandb=False, arms=arms, summaries={s.arm: s for s in complete})
                meta["table"] = {"title": report.table_md.read_text().splitlines()[0].lstrip("# "),
                                 "cells": report.cells, "has_paper": report.has_paper,
                                 "figures": [f.name for f in report.figures]}
        report = report.moved(stage, out_dir) if report is not None else None
    except AggregationError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        return 2
    show(console, runs_dir, out_dir, meta, args)
    if report is not None and not args.no_wandb:
        log_table_to_wandb(args.table, report)
    return 0


def task_tables(summaries: list, order: list[str] | None) -> list[dict]:
    """The staged / multi-label figures as console tables (title, columns, rows); none for binary arms."""
    from pneumollm.analysis.summary import in_order

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


def _print_rows(console: Console, title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("arm", "stage", "finding") else "right")
    fold = columns.index("fold") if "fold" in columns else None
    for row in rows:
        bold = fold is not None and row[fold] in ("mean ± std", "pooled [95% CI]")
        table.add_row(*row, style="bold" if bold else None)
    console.print(table)


def show(console: Console, runs_dir: Path, out_dir: Path, meta: dict, args: argparse.Namespace,
         kept: bool = False) -> None:
    """The summary (and the table) on the console, from what an aggregation recorded; ``kept``: the files were
    left as they were (nothing changed), else they were just written."""
    done = "kept" if kept else "written"
    why = " (unchanged since the last aggregation; --force remakes them)" if kept else ""
    _print_rows(console, f"{runs_dir}: {args.num_folds}-fold cross-validation (figures in %)",
                meta["summary_columns"], meta["summary_rows"])
    for recorded in meta.get("task_tables") or []:
        _print_rows(console, recorded["title"], recorded["columns"], recorded["rows"])
    for name, ps in meta["incomplete"].items():
        console.print(f"[yellow]incomplete arm {name}:[/yellow] " + "; ".join(ps), highlight=False)
    console.print(f"{done}: {out_dir / 'summary.csv'} and {out_dir / 'summary.md'}{why}", highlight=False)
    if meta.get("by"):
        console.print(f"by {meta['by']}: {out_dir / ('by_' + meta['by'] + '.md')} and .csv", highlight=False)
    if meta.get("table"):
        print_table(console, meta["table"], out_dir, done)


def print_table(console: Console, recorded: dict, out_dir: Path, done: str = "written") -> None:
    """The table's main columns on the console (the files hold every column)."""
    from pneumollm.analysis.tables import COLUMNS

    shown = ["Arm", "L-para (M)", "Sens.", "Spec.", "Acc.", "AUC", "AVG", "pooled AUC [95% CI]", "ΔAVG [95% CI]",
             "paper AUC", "paper AVG"]
    if not recorded["has_paper"]:
        shown = [c for c in shown if not c.startswith("paper ")]
    index = [COLUMNS.index(c) for c in shown]
    table = Table(title=recorded["title"])
    for column in shown:
        table.add_column(column, justify="left" if column == "Arm" else "right", no_wrap=column == "Arm")
    for cells in recorded["cells"]:
        table.add_row(*[cells[i] for i in index])
    console.print(table)
    console.print(f"{done}: {out_dir / 'table.md'}, {out_dir / 'table.csv'} (every column, incl. memory and ΔAUC)",
                  highlight=False)
    for figure in recorded["figures"]:
        console.print(f"figure: {out_dir / figure}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
