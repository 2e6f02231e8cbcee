"""``pneumollm-arm-param-count``: each comparison arm's trainable and total parameters at full size, next to the
paper's L-para column (Tables 2 and 3); the API is ``pneumollm.models.arm_param_count``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumollm.models.arm_param_count import DEFAULT_CONFIG_DIR, count_arm, format_table
from pneumollm.models.registry import arm_names

DESCRIPTION = "Full-size parameter counts of the comparison arms, built on the meta device (no memory, no download)."


def main(argv: list[str] | None = None) -> None:
    """Print each arm's trainable and total parameters (every arm when none is named)."""
    parser = argparse.ArgumentParser(prog="pneumollm-arm-param-count", description=DESCRIPTION)
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR)
    parser.add_argument("arms", nargs="*", help="arms to count (default: all)")
    args = parser.parse_args(argv)
    arms = args.arms or arm_names()
    print(format_table([count_arm(arm, args.config_dir) for arm in arms]))


if __name__ == "__main__":
    sys.exit(main())
