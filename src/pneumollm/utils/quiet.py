"""Silence third-party messages that say nothing about the run (sales tips, deprecations inside libraries), and
print each library message once."""

from __future__ import annotations

import logging
import warnings
from typing import Any

_NOISE = ("litlogger", "LitLogger", "Detected KeyboardInterrupt")  # the last: the suite says where a run stopped


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


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


class _LeftToLightning(logging.Filter):
    """Drops records of ``lightning.*`` loggers: Lightning's own console handler (on its ``lightning`` logger)
    prints them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.name == "lightning" or record.name.startswith("lightning.")):
            return True
        return not any(_is_console(h) for h in logging.getLogger("lightning").handlers)


def one_console_copy_of_lightning() -> None:
    """Print each Lightning message once on the console: Lightning prints it through its own handler, and
    Hydra's root logger, to which it also propagates, would print it a second time. The root logger's file
    handlers (``<run dir>/train.log``) keep their copy. Call once the job's logging is configured (Hydra sets
    up new handlers for every job)."""
    for handler in logging.getLogger().handlers:
        if _is_console(handler) and not any(isinstance(f, _LeftToLightning) for f in handler.filters):
            handler.addFilter(_LeftToLightning())


def quiet_wandb(verbose: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``wandb.init`` (and Lightning's ``WandbLogger``) that keep W&B silent unless
    ``verbose`` (``logger.wandb.verbose``); ``WANDB_SILENT=true`` in the environment still wins."""
    import wandb

    return {"settings": wandb.Settings(silent=not verbose)}
