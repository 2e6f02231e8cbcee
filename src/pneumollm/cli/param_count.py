"""``pneumollm-param-count``: parameter and weight-memory accounting of PneumoLLM configurations, built on the
``meta`` device (no memory, no download).

Without arguments it prints the trainable/total counts of the full-size model for every encoder and LLM choice
(the table in docs/model.md), then the bytes of the paper configuration's weights with the frozen backbones in
fp32, bf16/fp16, or with an int8 / nf4 LLM trunk, and which card sizes hold them. The paper's configuration
(CLIP ViT-L/14 + LLaMA-7B, m = 4, adapter hidden 8, neck 128) has exactly 2,704,000 trainable parameters.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pneumollm.models.param_count import (
    BYTES_NOTE,
    CONF_DIR,
    GROUPS,
    PAPER_CHOICES,
    ParameterCounts,
    bytes_table,
    full_size_model,
    markdown_table,
    trainable_breakdown,
)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the table, or the counts and breakdown of one configuration."""
    parser = argparse.ArgumentParser(prog="pneumollm-param-count", description=__doc__)
    parser.add_argument("overrides", nargs="*", help="group choices and dotlist overrides over the paper's "
                        "configuration, e.g. encoder=full_vit_b16_in21k token_engine.m=8; none: the full table")
    parser.add_argument("--conf-dir", default=None, help=f"config folder (default {CONF_DIR})")
    args = parser.parse_args(argv)
    if not args.overrides:
        print(markdown_table(args.conf_dir))
        print(f"\nWeights of the paper configuration ({BYTES_NOTE}):\n")
        print(bytes_table(full_size_model(PAPER_CHOICES, conf_dir=args.conf_dir)))
        return
    choices = {k: v for k, _, v in (o.partition("=") for o in args.overrides) if k in (*GROUPS, "model")}
    dotlist = [o for o in args.overrides if o.partition("=")[0] not in choices]
    model = full_size_model({**PAPER_CHOICES, **choices}, dotlist, args.conf_dir)
    counts = ParameterCounts.of(model)
    for name, n in trainable_breakdown(model).items():
        print(f"{name:>14}: {n:>14,} trainable")
    print(f"{'trainable':>14}: {counts.trainable:>14,}")
    print(f"{'total':>14}: {counts.total:>14,} (+{counts.excluded:,} unused token-embedding weights dropped)")
    print(f"\nWeights ({BYTES_NOTE}):\n")
    print(bytes_table(model))


if __name__ == "__main__":
    sys.exit(main())
