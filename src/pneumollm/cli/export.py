"""``pneumollm-export ARM_DIR --out DIR``: an arm's fold models (trainable weights only), their configs,
preprocessing, base-weight sources and fingerprints, recalibrations, metrics and a model card (docs/model_card.md),
to share or to predict with."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumollm.errors import user_errors_exit
from pneumollm.utils.console import say


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pneumollm-export", description=__doc__)
    parser.add_argument("arm_dir", type=Path,
                        help="an arm's folder with fold*/ runs (e.g. results/table6/demo/runs/pneumollm)")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    parser.add_argument("--bootstrap", type=int, default=2000,
                        help="patient-bootstrap resamples of the model card's intervals (default 2000)")
    args = parser.parse_args(argv)
    with user_errors_exit():
        from pneumollm.inference.export import export_arm

        out = export_arm(args.arm_dir, args.out, n_boot=args.bootstrap)
        size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
        say(f"exported {args.arm_dir} -> {out} ({size / 1e6:.1f} MB; model card: {out / 'README.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
