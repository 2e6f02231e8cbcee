"""``pneumollm-backbone-sizes``: the full-size LLM trunks and vision encoders beyond the paper's, built on the
``meta`` device (no memory, no download): parameters, adapters, and frozen-weight memory (docs/backbones.md)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pneumollm.models.components.trunk_architectures import FULL_SIZE_TRUNKS
from pneumollm.models.trunk_sizes import trunk_memory_table
from pneumollm.models.vision_backbones import VISION_BACKBONES
from pneumollm.models.vision_backbones import markdown_table as vision_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pneumollm-backbone-sizes", description=__doc__)
    parser.add_argument("--trunks", nargs="*", default=None, metavar="ARCH",
                        help=f"LLM trunk architectures (default all: {', '.join(FULL_SIZE_TRUNKS)})")
    parser.add_argument("--encoders", nargs="*", default=None, metavar="NAME",
                        help=f"vision backbones (default all: {', '.join(VISION_BACKBONES)})")
    args = parser.parse_args(argv)
    both = args.trunks is None and args.encoders is None
    if both or args.trunks is not None:
        print("LLM trunks (frozen weights only, token embedding dropped; GB = 1e9 bytes):\n")
        print(trunk_memory_table(args.trunks or list(FULL_SIZE_TRUNKS)))
    if both or args.encoders is not None:
        print("\nVision encoders:\n" if both or args.trunks is not None else "Vision encoders:\n")
        print(vision_table(args.encoders or None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
