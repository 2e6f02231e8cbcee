"""OmegaConf resolvers used by the configs, registered once before composing."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pneumollm.data.targets import output_count, positive_output, task_cohort
from pneumollm.models import task_texts
from pneumollm.models.registry import arm_label


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


def _task_of(root: DictConfig) -> tuple[str, Any, Any]:
    """(task, classes, label_columns) of a config's ``data`` node; the binary task where it has none (a model
    YAML loaded on its own, e.g. to count an arm's parameters)."""
    return (str(OmegaConf.select(root, "data.task", default="binary")),
            OmegaConf.select(root, "data.classes", default=None),
            OmegaConf.select(root, "data.label_columns", default=None))


def task_prompts(*, _root_: DictConfig) -> Any:
    """``${task_prompts:}``: the CLIP arms' class prompts for the run's ``data.task`` (``task_texts``)."""
    return OmegaConf.create(task_texts.class_prompts(*_task_of(_root_)))


def task_answers(*, _root_: DictConfig) -> Any:
    """``${task_answers:}``: the answer-scoring arms' answers for the run's ``data.task``."""
    return OmegaConf.create(task_texts.answers(*_task_of(_root_)))


def task_question(*, _root_: DictConfig) -> str:
    """``${task_question:}``: the answer-scoring arms' question for the run's ``data.task``."""
    return task_texts.question(_task_of(_root_)[0])


def row_label(arm: str, chosen: str | None) -> str:
    """``${row_label:${experiment.arm},${hydra:runtime.choices.arm}}``: a row named with ``arm=`` is labelled by
    its name in the paper's tables (``models.registry.arm_label``); a run without ``arm=`` by its arm id."""
    return arm_label(str(arm)) if chosen is not None else str(arm)


RESOLVERS = {
    "data_slug": data_slug, "cohort_slug": cohort_slug,
    "task_outputs": output_count, "task_positive_output": positive_output, "task_cohort": task_cohort,
    "task_prompts": task_prompts, "task_answers": task_answers, "task_question": task_question,
    "row_label": row_label,
}


def register_resolvers() -> None:
    """Register the suite's resolvers (idempotent)."""
    for name, function in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()
