"""``metrics.json``: one fold's test figures and what the run was, written and read back through ``FoldMetrics``.

Every field may be missing on reading: folders written by older versions of the suite lack some (``task``,
``classes``, ``class_names``, ``size``, ``threshold``...), and fake or hand-made runs hold only a few. Keys
this version does not know are kept in ``extra`` and written back unchanged, so reading never fails on them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

TEST_PREFIX = "test/"  # the test figures are stored flat: "test/auc", "test/avg", ...
CONFUSION_KEY = "test/confusion"  # staged tasks: true stage x predicted stage (a table, not a figure)
HEADLINE = ("sensitivity", "specificity", "accuracy", "auc", "avg")  # the paper's figures, in its order
WRITTEN_WHEN_SET = ("calibration",)  # fields metrics.json holds only when set (runs of before had no such key)


@dataclass
class FoldMetrics:
    """The content of a fold's ``metrics.json``; ``test`` holds the ``test/<name>`` figures keyed by name."""

    fold: int | None = None
    arm: str | None = None
    label: str | None = None  # the row label of tables
    experiment: str | None = None
    seed: int | None = None
    debug: Any = None  # the debug config of a debug run (those never count in tables); None for real runs
    test: dict[str, float] = field(default_factory=dict)  # unrounded: equal to prediction_metrics on predictions
    confusion: list[list[int]] | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None
    build_seconds: float | None = None
    train_seconds: float | None = None
    epochs_run: int | None = None
    selection: str | None = None  # best or last
    selection_split: str | None = None
    checkpoint: str | None = None  # the tested checkpoint, relative to the run folder (None: nothing trained)
    selected_epoch: int | None = None
    val: dict[str, float] = field(default_factory=dict)  # validation figures of the selected epoch
    threshold: float | None = None  # the cut-off on P(class 1) the test used
    threshold_mode: str | None = None
    threshold_fixed: float | None = None
    threshold_validation: float | None = None
    # calibration=temperature|platt: the recalibration fitted on the validation patients (``Recalibration.record``);
    # absent from metrics.json when none was asked for
    calibration: dict[str, Any] | None = None
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    config_hash: str | None = None
    cohort: dict[str, Any] = field(default_factory=dict)  # films, folds and preprocessing hashes of the cohort
    feature_cache: str | None = None
    cohort_name: str | None = None
    cohort_folder: str | None = None
    task: str | None = None  # None: binary (runs made before tasks existed)
    classes: list[str] = field(default_factory=list)
    class_names: list[str] | None = None
    size: str | None = None
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FoldMetrics:
        """The metrics of a ``metrics.json`` dict, whatever version wrote it."""
        own = {f.name for f in fields(cls)} - {"test", "confusion", "extra"}
        values = {k: data[k] for k in own if k in data}
        for name in ("val", "splits", "cohort", "classes", "warnings"):  # null where a container is expected
            if name in values and values[name] is None:
                values.pop(name)
        test = {k.removeprefix(TEST_PREFIX): v for k, v in data.items()
                if k.startswith(TEST_PREFIX) and k != CONFUSION_KEY}
        extra = {k: v for k, v in data.items() if k not in own and not k.startswith(TEST_PREFIX)}
        return cls(**values, test=test, confusion=data.get(CONFUSION_KEY), extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` dict: the test figures as ``test/<name>``, every other field by its name."""
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("test", "confusion", "extra")
                 and not (f.name in WRITTEN_WHEN_SET and getattr(self, f.name) is None)}
        figures = {f"{TEST_PREFIX}{k}": v for k, v in self.test.items()}
        confusion = {CONFUSION_KEY: self.confusion} if self.confusion is not None else {}
        return {**self.extra, **figures, **plain, **confusion}

    def figure(self, name: str) -> float:
        """The test figure ``name`` (``auc``, ``avg``, ...); NaN when the run did not record it."""
        value = self.test.get(name)
        return math.nan if value is None else float(value)
