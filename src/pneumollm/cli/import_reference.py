"""``pneumollm-import-reference CKPT... --out DIR``: the authors' published PneumoLLM checkpoint(s)
(``trainable_bestvalpt.pth`` of CodeMonsterPHD/PneumoLLM) as an export folder that ``pneumollm-predict`` loads.

Several checkpoints (e.g. one per fold) become the folds of one ensemble. The file is read without running code
from it (tensors, plain containers and argparse.Namespace only). See docs/reference_import.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumollm.errors import user_errors_exit
from pneumollm.utils.console import say


def build_parser() -> argparse.ArgumentParser:
    from pneumollm.inference.reference_import import DEFAULT_ENCODER, DEFAULT_LLM, IMPORT_SIZES

    parser = argparse.ArgumentParser(prog="pneumollm-import-reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path, metavar="CKPT",
                        help="the reference's trainable_bestvalpt.pth (several: the folds of an ensemble)")
    parser.add_argument("--out", type=Path, required=True, help="the export folder to write")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER,
                        help=f"CLIP ViT-L/14 base weights: hub id or local folder (default {DEFAULT_ENCODER})")
    parser.add_argument("--llm", default=DEFAULT_LLM,
                        help=f"LLaMA-7B base weights in Hugging Face format: hub id or local folder (default "
                             f"{DEFAULT_LLM})")
    parser.add_argument("--fingerprint", action="store_true",
                        help="load the base weights now and record their fingerprints, so that later loads are "
                             "checked against them (needs the memory to build the model: ~15 GB at full size)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides applied last, e.g. lungs=unet lungs.weights=/models/unet.pt")
    parser.add_argument("--size", choices=IMPORT_SIZES, default="full", help=argparse.SUPPRESS)  # tiny: tests
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with user_errors_exit():
        from pneumollm.inference.reference_import import import_reference

        out = import_reference(args.checkpoints, args.out, encoder=args.encoder, llm=args.llm, size=args.size,
                               overrides=args.set, fingerprint=args.fingerprint)
        checked = "checked against fingerprints" if args.fingerprint else "unchecked (no --fingerprint)"
        say(f"imported {len(args.checkpoints)} checkpoint(s) -> {out} (base weights {checked}; model card: "
            f"{out / 'README.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
