"""``pneumollm-compare``: two studies' tables side by side per arm (e.g. tiny vs full size, or two cohorts), or
two arms of one study (``--arms A,B``); the comparing is ``pneumollm.analysis.compare``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pneumollm.analysis.compare import (
    DEFAULT_METRICS,
    CompareError,
    StudyTable,
    arm_tables,
    body_cells,
    compare,
    header_cells,
    legend,
    read_study,
    write_csv,
    write_markdown,
)
from pneumollm.errors import USAGE_EXIT_CODE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumollm-compare",
        description="Two studies' tables side by side per arm: each metric's mean over folds in A, in B and "
                    "B − A (e.g. the tiny against the full size, or one cohort against another). Reads each "
                    "folder's table.csv (pneumollm-aggregate --table), else its summary.csv.",
    )
    parser.add_argument("results_a", type=Path, help="study folder A (e.g. results/table6/demo) or its table.csv")
    parser.add_argument("results_b", type=Path, nargs="?", default=None,
                        help="study folder B, compared against A (leave out with --arms)")
    parser.add_argument("--arms", default=None, metavar="A,B",
                        help="compare two arms of the one study given (ids or table labels), e.g. "
                             "--arms baseline,pneumollm: arm B against arm A")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                        help="comma-separated metrics (default: %(default)s); also pooled_auc, delta_avg, "
                             "delta_auc, trainable_params, peak_memory_gb, paper_auc, ...")
    parser.add_argument("--out", type=Path, default=None, help="also write the comparison to FILE.md or FILE.csv")
    return parser


def _sides(args: argparse.Namespace) -> tuple[StudyTable, StudyTable]:
    """A and B: two studies, or two arms of one study (``--arms``)."""
    if args.arms is not None:
        if args.results_b is not None:
            raise CompareError(f"--arms compares two arms of one study: give one study folder, not also "
                               f"{args.results_b}")
        return arm_tables(read_study(args.results_a), [a.strip() for a in args.arms.split(",") if a.strip()])
    if args.results_b is None:
        raise CompareError("give two study folders (A B), or one study and --arms A,B to compare two of its arms")
    return read_study(args.results_a), read_study(args.results_b)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 1000)  # piped: one line per row, never wrapped
    errors = Console(stderr=True, width=None if sys.stderr.isatty() else 1000)
    try:
        if args.out is not None and args.out.suffix not in (".md", ".csv"):
            raise CompareError(f"--out {args.out}: give a .md or a .csv file")
        a, b = _sides(args)
        comparison = compare(a, b, [m.strip() for m in args.metrics.split(",") if m.strip()])
    except CompareError as err:
        errors.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        return USAGE_EXIT_CODE
    for line in legend(comparison):
        console.print(line, highlight=False, soft_wrap=True)
    table = Table(title="per arm: A, B and B − A (means over folds)")
    for k, column in enumerate(header_cells(comparison)):
        table.add_column(column, justify="left" if k == 0 else "right", no_wrap=True)
    for row in body_cells(comparison):
        table.add_row(*row)
    console.print(table)
    if not any(arm in a.values and arm in b.values for arm, _, _ in comparison.rows):
        console.print("[yellow]no arm is in both tables[/yellow]")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        (write_csv if args.out.suffix == ".csv" else write_markdown)(comparison, args.out)
        console.print(f"written: {args.out}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
