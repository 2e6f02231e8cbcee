"""``pneumollm-external TABLE_DIR DATA.csv``: every arm of a finished table, as its folds' ensemble, on an external
cohort (a manifest with path, patient_id and label), into ``<study>/external/<cohort>/`` (table.md, table.csv,
predictions.csv, roc.png)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumollm.errors import user_errors_exit
from pneumollm.utils.console import say


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pneumollm-external", description=__doc__)
    parser.add_argument("table_dir", type=Path, help="a finished table's folder, e.g. results/table6")
    parser.add_argument("data", type=Path, help="the external cohort's manifest CSV (path,patient_id,label)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default <study>/external/<cohort>)")
    parser.add_argument("--num-folds", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config settings for every fold model (e.g. model.llm.name_or_path=/models/llama-7b)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    with user_errors_exit():
        from pneumollm.inference.external import external_validation
        from pneumollm.inference.predict import pick_device

        folders = external_validation(args.table_dir, args.data, args.out, args.bootstrap, tuple(args.set),
                                      str(pick_device(args.device)), args.num_folds, not args.no_progress)
        for folder in folders:
            say(f"external validation: {folder / 'table.md'}")
            print((folder / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
