"""Silence third-party messages that say nothing about the run (sales tips, deprecations inside libraries)."""

from __future__ import annotations

import logging
import warnings

_NOISE = ("litlogger", "LitLogger")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(token in message for token in _NOISE)


def quiet_third_party_noise() -> None:
    """Drop Lightning's LitLogger tip and library-internal deprecation warnings; keep everything else."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropNoise())
    logging.getLogger("openjpeg").setLevel(logging.WARNING)  # "tile number 1 / 1" per JPEG 2000 film
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message="The anonymous setting has no effect")
    # Frozen backbones are put in eval mode on purpose (no dropout in frozen parts); Lightning warns about it.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
