"""Where the suite's configs, sweep files and the paper's numbers live: inside the package (``pneumollm/conf``,
``pneumollm/experiments``, ``pneumollm/analysis/data``), so a wheel or a non-editable install carries them;
the checkout's top-level ``conf/`` and ``experiments/`` are links to the same folders."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]  # the checkout (meaningful for an editable install only)


def conf_dir() -> Path:
    """The Hydra config folder (the package's ``conf/``, or ``$PNEUMOLLM_CONF``)."""
    path = Path(os.environ.get("PNEUMOLLM_CONF", PACKAGE_DIR / "conf"))
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(
            f"Hydra configs not found in {path}: reinstall the suite (pip install .) or point PNEUMOLLM_CONF at a "
            "folder holding train.yaml."
        )
    return path


def experiments_dir() -> Path:
    """The folder of sweep files, one per paper table or figure (the package's, or ``$PNEUMOLLM_EXPERIMENTS``)."""
    return Path(os.environ.get("PNEUMOLLM_EXPERIMENTS", PACKAGE_DIR / "experiments"))


def paper_results_file() -> Path:
    """The paper's reported numbers, one row per table row (``analysis/data/paper_results.csv``)."""
    return PACKAGE_DIR / "analysis" / "data" / "paper_results.csv"
