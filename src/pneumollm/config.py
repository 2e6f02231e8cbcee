"""OmegaConf resolvers used by the configs, registered once before composing."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pneumollm.models.sizing import SIZES


def data_slug(path: str) -> str:
    """A readable, unique folder name for a cohort file: its stem plus a hash of its absolute path."""
    resolved = Path(str(path)).expanduser().resolve()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", resolved.stem)[:40] or "cohort"
    return f"{stem}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def cohort_slug(key: str, *, _root_: DictConfig) -> str:
    """``${cohort_slug:data.source.manifest}``: ``data_slug`` of the file at ``key``, or ``unset`` while it is
    missing (so output folders resolve, and the missing value is reported by the step that needs it)."""
    value = OmegaConf.select(_root_, key, throw_on_missing=False)
    return data_slug(str(value)) if value not in (None, "") else "unset"


def sized(full: Any, tiny: Any, *, _root_: DictConfig) -> Any:
    """``${sized:<full value>,<tiny value>}``: pick a value by the run's ``size_name`` (tiny or full)."""
    size = _root_.get("size_name", "tiny")
    if size not in SIZES:
        raise ValueError(f"unknown size_name {size!r}; choose one of {SIZES}")
    value = full if size == "full" else tiny
    return OmegaConf.create(value) if isinstance(value, dict | list) else value


def register_resolvers() -> None:
    """Register the suite's resolvers (idempotent)."""
    if not OmegaConf.has_resolver("data_slug"):
        OmegaConf.register_new_resolver("data_slug", data_slug)
    if not OmegaConf.has_resolver("cohort_slug"):
        OmegaConf.register_new_resolver("cohort_slug", cohort_slug)
    if not OmegaConf.has_resolver("sized"):
        OmegaConf.register_new_resolver("sized", sized)


register_resolvers()
