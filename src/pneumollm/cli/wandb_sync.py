"""``pneumollm-wandb-sync FOLDER...``: upload every offline W&B run under the folders.

``make sync TABLE=table6`` calls it on ``results/table6``: the fold runs of every arm and cohort and the aggregate
runs (one per table, size and cohort). Runs with the same id (a resumed fold, a re-aggregated table) are sent in
the order they were written, so W&B continues the one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumollm.analysis.wandb_sync import offline_runs, sync_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pneumollm-wandb-sync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="list the runs instead of uploading them")
    args = parser.parse_args(argv)
    missing = [f for f in args.folders if not f.is_dir()]
    if missing:
        print(f"error: {', '.join(map(str, missing))}: folder not found", file=sys.stderr)
        return 2
    runs = offline_runs(args.folders)
    if not runs:
        print(f"error: no offline W&B runs under {', '.join(map(str, args.folders))}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n".join(map(str, runs)))
        return 0
    return sync_runs(runs)


if __name__ == "__main__":
    sys.exit(main())
