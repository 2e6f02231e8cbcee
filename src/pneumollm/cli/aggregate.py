"""``pneumollm-aggregate``: summarise the fold runs of an experiment folder into a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from pneumollm.analysis.collect import RUNS_SUBDIR, AggregationError, collect_runs, find_studies, split_complete
from pneumollm.analysis.summary import summarise_arm, summary_rows, write_summary
from pneumollm.utils.io import output_set

if TYPE_CHECKING:
    from pneumollm.analysis.report import TableReport


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
    parser.add_argument("--no-wandb", action="store_true", help="do not write the W&B aggregate run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
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
            console.rule(str(study))
        out_dir = args.out / study.name if args.out and len(studies) > 1 else args.out or study
        codes.append(aggregate_study(study, out_dir, args, console))
    return max(codes)


def aggregate_study(study: Path, out_dir: Path, args: argparse.Namespace, console: Console) -> int:
    """Summarise one study into ``out_dir``: summary files and, with ``--table``, the table and its figures,
    replaced together (a failure leaves the previous set as it was)."""
    runs_dir = study / RUNS_SUBDIR if (study / RUNS_SUBDIR).is_dir() else study
    if study.name == RUNS_SUBDIR and out_dir == study:
        out_dir = study.parent
    report = None
    if args.table:  # tables and figures need matplotlib and scikit-learn's t-SNE; a summary does not
        from pneumollm.analysis.report import aggregate_table, log_table_to_wandb, table_arm_order
    try:
        arms = collect_runs(runs_dir)
        complete_arms, incomplete = split_complete(arms, args.num_folds, args.partial, runs_dir)
        complete = [summarise_arm(arm) for arm in complete_arms.values()]
        order = table_arm_order(complete_arms, args.table) if args.table else None
        with output_set(out_dir, "aggregate") as stage:
            write_summary(complete, stage, order=order)
            if args.table:
                report = aggregate_table(runs_dir, stage, args.table, reference=args.reference,
                                         num_folds=args.num_folds, partial=args.partial, n_boot=args.bootstrap,
                                         use_wandb=False, arms=arms).moved(stage, out_dir)
    except AggregationError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        return 2
    table = Table(title=f"{runs_dir}: {args.num_folds}-fold cross-validation (figures in %)")
    rows = summary_rows(complete, order=order)
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "arm" else "right")
    for row in rows:
        table.add_row(*row.values(), style="bold" if row["fold"] == "mean ± std" else None)
    console.print(table)
    for name, ps in incomplete.items():
        console.print(f"[yellow]incomplete arm {name}:[/yellow] " + "; ".join(ps), highlight=False)
    console.print(f"written: {out_dir / 'summary.csv'} and {out_dir / 'summary.md'}", highlight=False)
    if report is not None:
        print_table(console, report)
        if not args.no_wandb:
            log_table_to_wandb(args.table, report)
    return 0


def print_table(console: Console, report: TableReport) -> None:
    """The table's main columns on the console (the files hold every column)."""
    from pneumollm.analysis.tables import COLUMNS

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
