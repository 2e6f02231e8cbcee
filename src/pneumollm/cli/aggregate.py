"""``pneumollm-aggregate``: summarise the fold runs of an experiment folder into a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pneumollm.analysis.collect import AggregationError, collect_runs, split_complete
from pneumollm.analysis.report import TableReport, aggregate_table
from pneumollm.analysis.summary import summarise_arm, summary_rows, write_summary
from pneumollm.analysis.tables import COLUMNS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumollm-aggregate",
        description="Summarise <experiment_dir>/<arm>/fold<k>/ runs: per-fold rows, mean ± std, pooled AUC.",
    )
    parser.add_argument("experiment_dir", type=Path, help="folder holding <arm>/fold<k>/metrics.json")
    parser.add_argument("--num-folds", type=int, default=5, help="folds every arm must have (default 5)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write summary.csv and summary.md (default: experiment_dir)")
    parser.add_argument("--partial", action="store_true",
                        help="summarise complete arms and list incomplete ones instead of refusing")
    parser.add_argument("--table", default=None,
                        help="also build the paper-style table and figures of this table/figure (e.g. table6)")
    parser.add_argument("--reference", default=None, help="arm the paired differences are taken against")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the pooled-AUC interval")
    parser.add_argument("--no-wandb", action="store_true", help="do not write the W&B aggregate run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        arms = collect_runs(args.experiment_dir)
        complete_arms, incomplete = split_complete(arms, args.num_folds, args.partial, args.experiment_dir)
        complete = [summarise_arm(arm) for arm in complete_arms.values()]
    except AggregationError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        return 2
    out_dir = args.out or (args.experiment_dir.parent if args.experiment_dir.name == "runs" else args.experiment_dir)
    csv_path, md_path = write_summary(complete, out_dir)
    table = Table(title=f"{args.experiment_dir}: {args.num_folds}-fold cross-validation (figures in %)")
    rows = summary_rows(complete)
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "arm" else "right")
    for row in rows:
        table.add_row(*row.values(), style="bold" if row["fold"] == "mean ± std" else None)
    console.print(table)
    for name, ps in incomplete.items():
        console.print(f"[yellow]incomplete arm {name}:[/yellow] " + "; ".join(ps), highlight=False)
    console.print(f"written: {csv_path} and {md_path}", highlight=False)
    if args.table:
        try:
            report = aggregate_table(args.experiment_dir, out_dir, args.table, reference=args.reference,
                                     num_folds=args.num_folds, partial=args.partial, n_boot=args.bootstrap,
                                     use_wandb=not args.no_wandb, arms=arms)
        except AggregationError as err:
            console.print(f"[red]error:[/red] {err}", highlight=False)
            return 2
        print_table(console, report)
    return 0


def print_table(console: Console, report: TableReport) -> None:
    """The table's main columns on the console (the files hold every column)."""
    shown = ["Arm", "L-para (M)", "Sens.", "Spec.", "Acc.", "AUC", "AVG", "pooled AUC [95% CI]", "ΔAVG [95% CI]",
             "paper AUC", "paper AVG"]
    if not report.has_paper:
        shown = [c for c in shown if not c.startswith("paper ")]
    index = [COLUMNS.index(c) for c in shown]
    table = Table(title=report.table_md.read_text().splitlines()[0].lstrip("# "))
    for column in shown:
        table.add_column(column, justify="left" if column == "Arm" else "right", no_wrap=column == "Arm")
    for cells in report.cells:
        table.add_row(*[cells[i] for i in index])
    console.print(table)
    console.print(f"written: {report.table_md}, {report.table_csv} (every column, incl. memory and ΔAUC)",
                  highlight=False)
    for figure in report.figures:
        console.print(f"figure: {figure}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
