"""``pneumollm-build-memory``: peak host memory of building the frozen backbones (``pneumollm.models.build_memory``).

    pneumollm-build-memory                                           # LLaMA-7B and CLIP ViT-L/14 width, 1 and 2 layers
    pneumollm-build-memory --layers 32 --parts llama --builds meta   # the whole 7B trunk
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pneumollm.models import build_memory
from pneumollm.models.build_memory import BUILDS, PARTS, measure, report


def main(argv: Sequence[str] | None = None) -> None:
    """Measure the builds asked for and print the table (and write the rows with ``--json``)."""
    parser = argparse.ArgumentParser(prog="pneumollm-build-memory", description=f"{__doc__}\n{build_memory.__doc__}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["llama", "clip"], choices=PARTS)
    parser.add_argument("--builds", nargs="+", default=["plain", "meta", "pretrained"], choices=BUILDS)
    parser.add_argument("--layers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = measure(args.parts, args.builds, args.layers)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(report(rows))


if __name__ == "__main__":
    sys.exit(main())
