"""``pneumollm-train``: the Hydra app that trains and tests one fold (``-m`` sweeps folds and arms)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pneumollm.config import register_resolvers
from pneumollm.paths import conf_dir
from pneumollm.training.run import run_fold
from pneumollm.utils.quiet import quiet_third_party_noise

register_resolvers()
quiet_third_party_noise()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def main(cfg: DictConfig) -> None:
    """Train and test the fold ``data.fold`` of the configured arm; results go to the Hydra run directory."""
    run_fold(cfg)


if __name__ == "__main__":
    main()
