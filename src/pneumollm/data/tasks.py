"""What a cohort's labels mean: the binary task (pneumoconiosis or not) or ILO profusion staging (multi-class).

``data.task`` chooses: ``binary`` (the paper's task: 0 normal, 1 pneumoconiosis) or ``multiclass`` (an ordinal
stage per film, classes listed in ``data.classes``, by default the ILO major profusion categories 0, 1, 2, 3).
A stage cell may be written as the category (``2``), a Roman stage (``II``, ``stage II``; Chinese practice's
stage I, II, III are categories 1, 2, 3), or an ILO minor category (``2/1``, ``1/0``, ``0/-``, ``3/+``: the
major category is the first figure); ``data.label_map`` adds other spellings (``{"simple silicosis": 1}``).
For staging, "any pneumoconiosis" is stage >= 1, so every staged run also reports the paper's binary metrics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pneumollm.errors import ConfigError

TASKS = ("binary", "multiclass")
ILO_CLASSES = ("0", "1", "2", "3")
_ROMAN = {"0": 0, "i": 1, "ii": 2, "iii": 3, "iv": 4}
_ILO_MINOR = re.compile(r"^([0-9])\s*/\s*([0-9+\-])$")


@dataclass(frozen=True)
class TaskSpec:
    """The task of a run: its kind and class names (index = the class's integer label)."""

    kind: str
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def staged(self) -> bool:
        return self.kind == "multiclass"


def task_spec(task: str, classes: Sequence[str] | None = None) -> TaskSpec:
    """Check ``data.task`` and ``data.classes`` and return the task; a ``ConfigError`` says what is wrong."""
    if task not in TASKS:
        raise ConfigError(f"data.task={task!r} is not a task; choose one of {', '.join(TASKS)}")
    if task == "binary":
        return TaskSpec("binary", ("normal", "pneumoconiosis"))
    names = tuple(str(c) for c in (classes if classes is not None else ILO_CLASSES))
    if len(names) < 3:
        raise ConfigError(f"data.classes={list(names)}: a multi-class task needs at least 3 classes "
                          "(two classes are data.task=binary)")
    if len(set(names)) != len(names):
        raise ConfigError(f"data.classes={list(names)} repeats a class")
    return TaskSpec("multiclass", names)


def num_classes(task: str, classes: Sequence[str] | None = None) -> int:
    """The number of logits a head needs for the task (the ``task_classes`` resolver of the configs)."""
    return task_spec(task, classes).num_classes


def parse_stage(raw: str | None, spec: TaskSpec, label_map: Mapping[str, int] | None, where: str) -> int | None:
    """A stage cell as the class index (0 .. num_classes-1); None for an empty cell.

    ``where`` names the file, row and column for the error raised on a value that is not a stage.
    """
    from pneumollm.data.cohort import CohortError

    text = ("" if raw is None else str(raw)).strip()
    if text == "" or text.lower() in {"nan", "none", "null"}:
        return None
    key = re.sub(r"\s+", " ", text.lower())
    extra = {str(k).strip().lower(): int(v) for k, v in (label_map or {}).items()}
    value: int | None = None
    if key in extra:
        value = extra[key]
    elif key in [c.lower() for c in spec.classes]:
        value = [c.lower() for c in spec.classes].index(key)
    else:
        bare = key.removeprefix("stage ").removeprefix("category ").strip()
        if bare.endswith(".0") and bare[:-2].isdigit():
            bare = bare[:-2]
        minor = _ILO_MINOR.match(bare)
        if bare.isdigit():
            value = int(bare)
        elif bare in _ROMAN:
            value = _ROMAN[bare]
        elif minor:
            value = int(minor.group(1))
    if value is None:
        raise CohortError(f"{where}: {text!r} is not a stage; write the category (0-{spec.num_classes - 1}), a Roman "
                          "stage (I, II, III), an ILO category such as 2/1, or add it to data.label_map")
    if not 0 <= value < spec.num_classes:
        raise CohortError(f"{where}: stage {text!r} is outside the task's classes {list(spec.classes)} "
                          "(data.classes)")
    return value
