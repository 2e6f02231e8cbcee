"""``pneumollm-eval-lungs``: measure a lung-segmentation option against ground-truth masks: lung Dice and
bounding-rectangle IoU (``pneumollm.data.lungs.evaluate``).

    pneumollm-eval-lungs --images DIR --segmenter threshold|unet [--weights PATH] --out DIR

Pairs each film ``NAME.jpg`` (or .jpeg/.png/...) in DIR with its mask ``NAME@.png`` (``--mask-suffix``),
runs the segmenter and the crop step (without margin) on the 8-bit greyscale film, and writes
``per_film.csv``, ``summary.json`` and ``worst_films.png`` (a QC sheet of the lowest IoUs) into --out.
A film whose crop falls back to the whole film scores the whole film's rectangle and counts as a failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pneumollm.data.lungs.evaluate import SEGMENTERS, evaluate, find_pairs, make_segmenter

DESCRIPTION = ("Measure a lung-segmentation option against ground-truth masks: lung Dice and bounding-rectangle "
               "IoU.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pneumollm-eval-lungs", description=DESCRIPTION)
    parser.add_argument("--images", type=Path, required=True, help="folder with films and their masks")
    parser.add_argument("--segmenter", choices=SEGMENTERS, required=True)
    parser.add_argument("--weights", default=None, help="U-Net state dict (lungs=unet)")
    parser.add_argument("--device", default="cpu", help="torch device for the U-Net")
    parser.add_argument("--out", type=Path, required=True, help="folder for per_film.csv and summary.json")
    parser.add_argument("--mask-suffix", default="@.png", help="mask file = film stem + this (default '@.png')")
    parser.add_argument("--limit", type=int, default=None, help="only the first N films (by name)")
    parser.add_argument("--worst", type=int, default=12, help="films on the worst-films QC sheet (0: none)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def print_table(summary: dict) -> None:
    """The summary as a rich table."""
    table = Table(title=f"lungs={summary['segmenter']} on {summary['films']} films")
    for column in ("measure", "mean", "median", "min"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for key, label in (("dice", "lung Dice"), ("box_iou", "bounding-box IoU")):
        stats = summary[key]
        table.add_row(label, f"{stats['mean']:.4f}", f"{stats['median']:.4f}", f"{stats['min']:.4f}")
    console = Console()
    console.print(table)
    console.print(f"crop fell back to the whole film: {summary['failures']}  {summary['failure_reasons'] or ''}")
    console.print(f"box IoU < 0.7: {summary['box_iou_below_0.7']}   seconds per film: {summary['seconds_per_film']}")
    margins = Table(title="effect of the crop margin")
    for column in ("margin", "IoU with true box", "crop holds >= 99% of true box"):
        margins.add_column(column, justify="right")
    for margin, effect in summary["margin_effect"].items():
        margins.add_row(margin, f"{effect['box_iou_mean']:.4f}", f"{effect['films_covering_true_box']:.1%}")
    console.print(margins)


def run(argv: Sequence[str] | None = None) -> dict:
    """Run the evaluation with command-line ``argv``; returns the summary (also in --out/summary.json)."""
    args = parse_args(argv)
    pairs, unpaired = find_pairs(args.images, args.mask_suffix)
    if not pairs:
        raise SystemExit(f"no film in {args.images} has a mask named <film stem>{args.mask_suffix}")
    if args.limit:
        pairs = pairs[: args.limit]
    segmenter = make_segmenter(args.segmenter, args.weights, args.device)
    summary = evaluate(pairs, segmenter, args.out, name=args.segmenter, images=args.images, unpaired=len(unpaired),
                       worst=args.worst, progress=not args.no_progress)
    print_table(summary)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``pneumollm-eval-lungs``)."""
    run(argv)


if __name__ == "__main__":
    sys.exit(main())
