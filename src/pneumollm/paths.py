"""Where the project's configs and sweep files live."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def conf_dir() -> Path:
    """The Hydra config folder (``conf/`` of the checkout, or ``$PNEUMOLLM_CONF``)."""
    path = Path(os.environ.get("PNEUMOLLM_CONF", REPO_ROOT / "conf"))
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(
            f"Hydra configs not found in {path}. Install the suite from its checkout (pip install -e .) "
            "or point PNEUMOLLM_CONF at the conf/ folder."
        )
    return path


def experiments_dir() -> Path:
    """The folder of sweep files, one per paper table or figure."""
    return Path(os.environ.get("PNEUMOLLM_EXPERIMENTS", REPO_ROOT / "experiments"))
