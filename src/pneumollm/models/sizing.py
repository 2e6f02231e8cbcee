"""Size-dependent model configs: one YAML holds a model's full-size and its tiny (CPU) variant."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

SIZES = ("tiny", "full")


def by_size(size: str, full: DictConfig | dict[str, Any], tiny: DictConfig | dict[str, Any] | None = None) -> Any:
    """Instantiate ``full`` or, when ``size == "tiny"``, ``tiny`` (falling back to ``full`` if absent).

    Used from YAML with ``_target_: pneumollm.models.sizing.by_size``, ``_recursive_: false`` and
    ``size: ${size_name}``, so that ``size=full`` on the command line swaps every sized model at once.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {SIZES}")
    chosen = tiny if size == "tiny" and tiny is not None else full
    from pneumollm.config import register_resolvers  # the task's prompts and answers (a YAML loaded on its own)

    register_resolvers()
    return instantiate(chosen, _convert_="object")
