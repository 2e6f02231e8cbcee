"""OmegaConf resolvers used by the configs, registered once before composing."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pneumollm.data.targets import output_count, positive_output, task_cohort
from pneumollm.models import task_texts
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


def _as_list_node(function: Any) -> Any:
    """A resolver returning a list, wrapped so OmegaConf stores the list as a list node."""
    return lambda *args: OmegaConf.create(list(function(*args)))


def register_resolvers() -> None:
    """Register the suite's resolvers (idempotent)."""
    if not OmegaConf.has_resolver("data_slug"):
        OmegaConf.register_new_resolver("data_slug", data_slug)
    if not OmegaConf.has_resolver("cohort_slug"):
        OmegaConf.register_new_resolver("cohort_slug", cohort_slug)
    if not OmegaConf.has_resolver("sized"):
        OmegaConf.register_new_resolver("sized", sized)
    if not OmegaConf.has_resolver("task_outputs"):
        OmegaConf.register_new_resolver("task_outputs", output_count)
    if not OmegaConf.has_resolver("task_positive_output"):
        OmegaConf.register_new_resolver("task_positive_output", positive_output)
    if not OmegaConf.has_resolver("task_cohort"):
        OmegaConf.register_new_resolver("task_cohort", task_cohort)
    for name, function in (("task_prompts", task_texts.class_prompts), ("task_answers", task_texts.answers)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, _as_list_node(function))
    if not OmegaConf.has_resolver("task_question"):
        OmegaConf.register_new_resolver("task_question", task_texts.question)


register_resolvers()
