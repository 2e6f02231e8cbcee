"""``pneumollm-backbone-sizes``: the full-size LLM trunks and vision encoders beyond the paper's, built on the
``meta`` device (no memory, no download): parameters, adapters, and frozen-weight memory (docs/backbones.md);
``--rows``: the backbone comparison's rows (PneumoLLM with one backbone swapped) as whole models."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pneumollm.models.backbone_rows import BACKBONE_ROWS
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
    parser.add_argument("--rows", nargs="*", default=None, metavar="ARM", choices=["pneumollm", *BACKBONE_ROWS],
                        help="the backbone comparison's rows as whole PneumoLLM models (default all: pneumollm and "
                             "every backbone_<name> arm of experiments/backbones.yaml)")
    args = parser.parse_args(argv)
    if args.rows is not None:
        from pneumollm.models.arm_param_count import backbone_rows_table

        print("Backbone comparison rows at full size (frozen weights only; GB = 1e9 bytes; nf4: "
              "llm.quantization=nf4, double quantisation):\n")
        print(backbone_rows_table(args.rows or None))
        if args.trunks is None and args.encoders is None:
            return 0
        print()
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
