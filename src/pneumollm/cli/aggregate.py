"""``pneumollm-aggregate``: summarise the fold runs of an experiment folder into a table
(``pneumollm.analysis.aggregate``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pneumollm.analysis.aggregate import AggregateOptions, aggregate_study
from pneumollm.analysis.collect import AggregationError, find_studies
from pneumollm.utils.console import make_console, rule


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
        codes.append(aggregate_one(study, out_dir, args, console))
    return max(codes)


def aggregate_one(study: Path, out_dir: Path, args: argparse.Namespace, console: Console) -> int:
    """Aggregate one study, show what it recorded and log the table to W&B; 2 when its runs cannot be aggregated."""
    try:
        done = aggregate_study(study, out_dir, AggregateOptions.of(args))
    except AggregationError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        return 2
    show(console, done.runs_dir, done.out_dir, done.meta, args, kept=done.kept)
    if done.report is not None and not args.no_wandb:
        from pneumollm.analysis.report import log_table_to_wandb

        log_table_to_wandb(args.table, done.report)
    return 0


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
    if meta.get("calibration"):
        calibration = meta["calibration"]
        _print_rows(console, "calibration, pooled out of fold (Brier, ECE: 0 is best; slope 1 and intercept 0 are "
                    "ideal; summary.md says more)", calibration["columns"], calibration["rows"])
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
