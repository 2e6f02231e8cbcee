"""``pneumollm-convert-llama META_DIR OUT_DIR``: turn Meta's original LLaMA weights (``params.json`` +
``consolidated.NN.pth``) into a Hugging Face folder to pass as ``llm.name_or_path`` (``--to-meta``: the reverse).

Tensors keep their stored dtype; the rows of wq/wk are reordered for Hugging Face's rotary embedding. The output
folder appears only when complete. See docs/weights.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from pneumollm.errors import user_errors_exit
from pneumollm.utils.console import say


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pneumollm-convert-llama", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="Meta's folder of one model size (params.json, consolidated.*.pth)"
                                                  "; with --to-meta a Hugging Face Llama folder")
    parser.add_argument("out", type=Path, help="the folder to write (must not exist or be empty, unless --force)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists and is not empty")
    parser.add_argument("--to-meta", action="store_true",
                        help="convert a Hugging Face folder to Meta's format (params.json + consolidated.00.pth)")
    parser.add_argument("--max-shard-size", default="2GB",
                        help="largest safetensors file to write (default 2GB; the memory needed is about one shard)")
    parser.add_argument("--max-position-embeddings", type=int, default=None,
                        help="context length for config.json (default: max_seq_len of params.json, else 2048)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with user_errors_exit():
        from pneumollm.models.weights.meta_llama import to_hf, to_meta

        if args.to_meta:
            summary = to_meta(args.source, args.out, force=args.force, progress=not args.no_progress)
        else:
            summary = to_hf(args.source, args.out, force=args.force, max_shard_size=args.max_shard_size,
                            max_position_embeddings=args.max_position_embeddings, progress=not args.no_progress)
        dtype = str(summary.dtype).removeprefix("torch.")
        say(f"converted {args.source} -> {summary.out_dir}: {summary.tensors} tensors, {dtype}, "
            f"{summary.bytes_on_disk / 1e9:.2f} GB on disk in {len(summary.files)} files, "
            f"{summary.seconds:.1f} s")
        if not args.to_meta:
            say(f"use it with: llm.name_or_path={shlex.quote(str(summary.out_dir.resolve()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
