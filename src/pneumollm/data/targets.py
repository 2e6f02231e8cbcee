"""What a cohort's labels mean: the binary diagnosis, an ordinal stage (multi-class) or co-findings (multi-label).

Every film carries two numbers through the suite:

- ``label``: "any pneumoconiosis" (0/1). The paper's Sens./Spec./Acc./AUC/AVG columns, thresholds, exports
  and explanations work on it whatever the task, so staged and binary tables stay comparable.
- ``target``: what the model is trained on. Binary: the label. Multi-class: the stage's index in
  ``classes`` (ordinal; index 0 is "no pneumoconiosis", any index >= 1 counts as pneumoconiosis).
  Multi-label: a bit mask, bit ``k`` set when finding ``label_columns[k]`` is present; the first finding is
  the primary one whose presence is the ``label``.

Which spellings are read (``parse_stage``): class names from ``classes``, digits (``2``, ``2.0``), Roman
numerals (``II``), a ``stage``/``category`` prefix (``stage II``), ILO 12-point notation (major/minor, ``2/1``
reads as 2, ``0/-`` as 0, ``3/+`` as 3), the usual words for normal, and ``label_map`` for any other.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pneumollm.errors import ConfigError, UserError

BINARY, MULTICLASS, MULTILABEL = "binary", "multiclass", "multilabel"
TASKS = (BINARY, MULTICLASS, MULTILABEL)
ILO_STAGES = ("0", "1", "2", "3")  # ILO profusion categories (stage 0, I, II, III in Chinese practice)
BINARY_CLASSES = ("normal", "pneumoconiosis")  # the default words of label 0 and label 1 (``data.class_names``)

NORMAL_WORDS = ("normal", "negative", "no", "false", "healthy")
POSITIVE_WORDS = ("pneumoconiosis", "positive", "yes", "true", "sick")
DEFAULT_LABEL_MAP: dict[str, int] = {**{w: 0 for w in NORMAL_WORDS}, **{w: 1 for w in POSITIVE_WORDS}, "0": 0, "1": 1}
FLAG_VALUES: dict[str, int] = {"0": 0, "1": 1, **{w: 0 for w in NORMAL_WORDS}, **{w: 1 for w in POSITIVE_WORDS},
                               "present": 1, "absent": 0, "y": 1, "n": 0}
MISSING = frozenset({"", "nan", "none", "null", "na", "n/a"})
ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5}
_STAGE = re.compile(r"(?:stage|category|cat\.?|ilo|profusion)?\s*(\d+|[iv]+)\s*(?:/\s*(\d+|[-+]))?")


class CohortError(UserError, ValueError):
    """A cohort definition that cannot be used as given (names the file and row)."""


class LabelError(CohortError):
    """A label value or label column that cannot be read (names the file, row and column)."""


def canonical_column(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _cell(raw: object) -> str | None:
    """The cell's text, stripped; None when it is empty or a missing-value marker."""
    text = ("" if raw is None else str(raw)).strip()
    return None if text.lower() in MISSING else text


def _integer_text(key: str) -> str:
    return key[:-2] if key.endswith(".0") and key[:-2].isdigit() else key


def parse_binary(raw: object, label_map: Mapping[str, int], where: str) -> int | None:
    """A diagnosis cell as 0/1; None for an empty cell; ``LabelError`` naming ``where`` if unknown."""
    text = _cell(raw)
    if text is None:
        return None
    key = _integer_text(text.lower())
    if key not in label_map:
        known = ", ".join(sorted(label_map))
        raise LabelError(f"{where}: unknown label value {text!r}; known values: {known} (set data.label_map to add)")
    return int(label_map[key])


def parse_stage(raw: object, classes: Sequence[str], label_map: Mapping[str, int | str], where: str) -> int | None:
    """A stage cell as its index in ``classes``; None for an empty cell; ``LabelError`` naming ``where`` otherwise."""
    text = _cell(raw)
    if text is None:
        return None
    key = _integer_text(text.lower())
    names = {c.lower(): i for i, c in enumerate(classes)}
    if key in label_map:
        mapped = label_map[key]
        if isinstance(mapped, str) and mapped.lower() in names:
            return names[mapped.lower()]
        stage = int(mapped)
    elif key in names:
        return names[key]
    elif key in NORMAL_WORDS:
        stage = 0
    else:
        match = _STAGE.fullmatch(key)
        if match is None:
            raise LabelError(
                f"{where}: {text!r} is not a stage; expected one of {', '.join(classes)}, a Roman numeral "
                "(I, II, III), an ILO category such as 2/1, or a spelling added with data.label_map")
        major, minor = match.group(1), match.group(2)
        stage = int(major) if major.isdigit() else ROMAN.get(major, -1)
        if stage < 0:
            raise LabelError(f"{where}: {text!r} is not a stage (unknown numeral {major!r})")
        if minor is not None and (abs(int(minor) - stage) > 1 if minor.isdigit() else
                                  (minor == "-") != (stage == 0) and (minor == "+") != (stage == 3)):
            raise LabelError(f"{where}: {text!r} is not an ILO category (12-point scale 0/- to 3/+: the minor "
                             "category is the major one or a neighbour)")
    if not 0 <= stage < len(classes):
        raise LabelError(f"{where}: stage {text!r} is outside data.classes ({', '.join(classes)}: "
                         f"indices 0..{len(classes) - 1}); add a class or map the value with data.label_map")
    return stage


def parse_flag(raw: object, where: str) -> int | None:
    """A finding's 0/1 cell; None for an empty cell; ``LabelError`` naming ``where`` otherwise."""
    text = _cell(raw)
    if text is None:
        return None
    key = _integer_text(text.lower())
    if key not in FLAG_VALUES:
        raise LabelError(f"{where}: {text!r} is not 0/1 (a finding column takes 0, 1, yes, no, true, false, "
                         "present, absent)")
    return FLAG_VALUES[key]


@dataclass(frozen=True)
class LabelTask:
    """The task a cohort's labels define, and how to read them (the ``data.task`` settings)."""

    task: str = BINARY
    classes: tuple[str, ...] = ILO_STAGES  # multiclass: the ordinal stages, the first one "no pneumoconiosis"
    label_columns: tuple[str, ...] = ()  # multilabel: one 0/1 column per finding, the primary one first
    label_column: str | None = None  # binary / multiclass: the labels column (default: label, diagnosis, ...)
    label_map: Mapping[str, int | str] = field(default_factory=dict, hash=False)
    class_names: tuple[str, str] = BINARY_CLASSES  # the words of label 0 and 1 ("any" class 1) in every output

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"data.task must be one of {', '.join(TASKS)}, got {self.task!r}")
        object.__setattr__(self, "class_names", check_class_names(self.class_names))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "label_columns", tuple(str(c) for c in self.label_columns or ()))
        object.__setattr__(self, "label_map", {str(k).strip().lower(): v for k, v in (self.label_map or {}).items()})
        if self.task == MULTICLASS and len(self.classes) < 2:
            raise ConfigError(f"data.task=multiclass needs at least two data.classes, got {list(self.classes)}")
        if self.task == MULTICLASS and len({c.lower() for c in self.classes}) != len(self.classes):
            raise ConfigError(f"data.classes has repeated names: {list(self.classes)}")
        if self.task == MULTILABEL and not self.label_columns:
            raise ConfigError("data.task=multilabel needs data.label_columns=[finding,...] (one 0/1 column per "
                              "finding, the primary one first)")
        if self.task == MULTILABEL and len(self.label_columns) > 30:
            raise ConfigError(f"data.label_columns: at most 30 findings, got {len(self.label_columns)}")

    @classmethod
    def from_config(cls, task: str = BINARY, classes: Iterable[object] | None = None,
                    label_columns: Iterable[object] | None = None, label_column: str | None = None,
                    label_map: Mapping[str, int | str] | None = None,
                    class_names: Iterable[object] | None = None) -> LabelTask:
        """The task of a ``data`` config's values (lists may be OmegaConf nodes; None takes the defaults)."""
        return cls(task=str(task), classes=tuple(str(c) for c in (classes or ILO_STAGES)),
                   label_columns=tuple(str(c) for c in (label_columns or ())),
                   label_column=label_column or None, label_map=dict(label_map or {}),
                   class_names=tuple(str(c) for c in (class_names or BINARY_CLASSES)))

    # ---- what the model predicts ---------------------------------------------------------------------------
    @property
    def output_names(self) -> tuple[str, ...]:
        """One name per model output: the two binary classes, the stages, or the findings."""
        return {BINARY: BINARY_CLASSES, MULTICLASS: self.classes, MULTILABEL: self.label_columns}[self.task]

    @property
    def num_outputs(self) -> int:
        return len(self.output_names)

    def any_label(self, target: int) -> int:
        """"Any pneumoconiosis" (0/1) of a target: stage >= 1, or the primary finding's bit."""
        return int(target & 1) if self.task == MULTILABEL else int(target >= 1)

    def combine(self, targets: Iterable[int]) -> int:
        """A patient's target from their films': the highest stage, or every finding on any film."""
        values = [int(t) for t in targets]
        if self.task != MULTILABEL:
            return max(values)
        combined = 0
        for value in values:
            combined |= value
        return combined

    def multi_hot(self, target: int) -> list[int]:
        """The bits of a multi-label target, one per finding."""
        return [(int(target) >> k) & 1 for k in range(len(self.label_columns))]

    def describe(self, target: int) -> str:
        """A target in words: the class, or the findings present (``none`` for no finding)."""
        if self.task == MULTILABEL:
            found = [n for n, bit in zip(self.label_columns, self.multi_hot(target)) if bit]
            return "+".join(found) or "none"
        return self.output_names[int(target)]

    def cohort_suffix(self) -> str:
        """What output and prepared folders add to a cohort's name for this task ('' for binary), so runs of
        different tasks (or stage lists, or findings) on one cohort never share folds, caches or results."""
        if self.task == BINARY:
            return ""
        chosen = self.classes if self.task == MULTICLASS else self.label_columns
        if self.task == MULTICLASS and chosen == ILO_STAGES:
            return f"-{self.task}"
        return f"-{self.task}-{hashlib.sha256('|'.join(chosen).encode()).hexdigest()[:8]}"

    # ---- reading label rows --------------------------------------------------------------------------------
    def columns(self, header: Sequence[str], candidates: tuple[str, ...], source: object) -> tuple[str, ...]:
        """The header's columns that hold this task's labels; ``LabelError`` naming ``source`` when absent."""
        by_canon = {canonical_column(h): h for h in header}
        if self.task == MULTILABEL:
            missing = [c for c in self.label_columns if canonical_column(c) not in by_canon]
            if missing:
                raise LabelError(f"{source}: missing finding column(s) {', '.join(missing)} named in "
                                 f"data.label_columns; found {', '.join(header)}")
            return tuple(by_canon[canonical_column(c)] for c in self.label_columns)
        wanted = (canonical_column(self.label_column),) if self.label_column else candidates
        found = next((by_canon[c] for c in wanted if c in by_canon), None)
        if found is None:
            columns = ", ".join(repr(h) for h in header)
            if self.label_column:
                raise LabelError(f"{source}: no column {self.label_column!r} (data.label_column); the columns are "
                                 f"{columns}: set data.label_column to one of them")
            raise LabelError(f"{source}: no label column (looked for {', '.join(candidates)}, in any case); the "
                             f"columns are {columns}: name the one holding the labels with data.label_column=NAME")
        return (found,)

    def parse(self, row: Mapping[str, object], columns: Sequence[str], where: str) -> tuple[int, int] | str:
        """(target, any-pneumoconiosis label) of a label row, or the reason it has none (an empty cell)."""
        if self.task == MULTILABEL:
            target = 0
            for bit, column in enumerate(columns):
                value = parse_flag(row.get(column), f"{where}, column {column!r}")
                if value is None:
                    return f"missing value of finding {column!r}"
                target |= value << bit
            return target, self.any_label(target)
        column = columns[0]
        at = f"{where}, column {column!r}"
        if self.task == MULTICLASS:
            stage = parse_stage(row.get(column), self.classes, self.label_map, at)
            return "missing label" if stage is None else (stage, self.any_label(stage))
        own_words = {name.lower(): k for k, name in enumerate(self.class_names)}
        mapping = {**DEFAULT_LABEL_MAP, **own_words, **{k: int(v) for k, v in self.label_map.items()}}
        label = parse_binary(row.get(column), mapping, at)
        return "missing label" if label is None else (label, label)


def check_class_names(names: Iterable[object] | None) -> tuple[str, str]:
    """``data.class_names`` as two words (label 0, label 1); ``ConfigError`` unless two distinct non-empty ones."""
    words = tuple(str(n).strip() for n in (names if names is not None else BINARY_CLASSES))
    if len(words) != 2 or not all(words) or words[0].lower() == words[1].lower():
        raise ConfigError(f"data.class_names must name label 0 and label 1 with two different words, e.g. "
                          f"[control,tuberculosis]; got {list(words)}")
    return words  # type: ignore[return-value]


def output_count(task: str, classes: Sequence[object] | None, label_columns: Sequence[object] | None) -> int:
    """``${task_outputs:...}``: the number of model outputs of a task (heads and losses are sized by it)."""
    return LabelTask.from_config(task, classes, label_columns).num_outputs


def positive_output(task: str) -> int:
    """``${task_positive_output:...}``: the sigmoid output that is P(pneumoconiosis) (the primary finding for
    findings, the positive class of a binary two-output head)."""
    return 0 if str(task) == MULTILABEL else 1


def task_cohort(name: str, task: str, classes: Sequence[object] | None,
                label_columns: Sequence[object] | None) -> str:
    """``${task_cohort:...}``: a cohort's folder name for a task (the binary task keeps the plain name)."""
    return f"{name}{LabelTask.from_config(task, classes, label_columns).cohort_suffix()}"
