"""Per-fold figures of the staged (multi-class) and multi-label tasks, from torchmetrics.

Multi-class: stage accuracy, macro one-vs-rest AUC, quadratic-weighted Cohen's kappa (ordinal agreement), each
stage's sensitivity and specificity (one stage against the rest), and the confusion matrix. Multi-label:
each finding's AUC, sensitivity and specificity, and macro and micro AUC. Percentages like the paper's metrics,
except kappa, which stays a coefficient in [-1, 1]. Stage calls are the most probable stage; finding calls
are a sigmoid above 0.5.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassRecall,
    MulticlassSpecificity,
    MultilabelAUROC,
    MultilabelRecall,
    MultilabelSpecificity,
)

from pneumollm.data.targets import MULTICLASS, LabelTask

UNSCALED = ("kappa",)  # coefficients, not percentages


def metric_key(kind: str, name: str) -> str:
    """The per-output metric's key, e.g. ``sensitivity_stage_2`` or ``auc_tuberculosis``."""
    return f"{kind}_{name}"


def per_output_names(task: LabelTask) -> list[str]:
    """Names the per-output metrics carry: ``stage_<class>`` for stages, the finding itself for findings."""
    return [f"stage_{c}" for c in task.classes] if task.task == MULTICLASS else list(task.label_columns)


class TaskMetrics(nn.Module):
    """The task's torchmetrics, updated with output probabilities [B, C] and targets (class indices [B] or
    multi-hot [B, L]); ``compute`` gives flat ``{prefix + key: value}`` figures."""

    def __init__(self, task: LabelTask) -> None:
        super().__init__()
        self.task = task
        n = task.num_outputs
        if task.task == MULTICLASS:
            self.summary = MetricCollection({
                "stage_accuracy": MulticlassAccuracy(num_classes=n, average="micro"),
                "macro_auc": MulticlassAUROC(num_classes=n, average="macro"),
                "kappa": MulticlassCohenKappa(num_classes=n, weights="quadratic"),
            })
            self.per_output = MetricCollection({
                "sensitivity": MulticlassRecall(num_classes=n, average=None),
                "specificity": MulticlassSpecificity(num_classes=n, average=None),
            })
            self.matrix: MulticlassConfusionMatrix | None = MulticlassConfusionMatrix(num_classes=n)
        else:
            self.summary = MetricCollection({
                "macro_auc": MultilabelAUROC(num_labels=n, average="macro"),
                "micro_auc": MultilabelAUROC(num_labels=n, average="micro"),
            })
            self.per_output = MetricCollection({
                "auc": MultilabelAUROC(num_labels=n, average=None),
                "sensitivity": MultilabelRecall(num_labels=n, average=None),
                "specificity": MultilabelSpecificity(num_labels=n, average=None),
            })
            self.matrix = None

    def _targets(self, target: torch.Tensor) -> torch.Tensor:
        return target.long() if self.task.task == MULTICLASS else target.round().long()

    def update(self, probabilities: torch.Tensor, target: torch.Tensor) -> None:
        target = self._targets(target)
        self.summary.update(probabilities, target)
        self.per_output.update(probabilities, target)
        if self.matrix is not None:
            self.matrix.update(probabilities, target)

    def compute(self, prefix: str = "") -> dict[str, float]:
        values = {f"{prefix}{k}": float(v) * (1.0 if k in UNSCALED else 100.0)
                  for k, v in self.summary.compute().items()}
        names = per_output_names(self.task)
        for kind, vector in self.per_output.compute().items():
            values.update({f"{prefix}{metric_key(kind, n)}": float(x) * 100.0 for n, x in zip(names, vector.tolist())})
        return values

    def confusion(self) -> list[list[int]] | None:
        """Counts of (true stage, predicted stage); None for findings."""
        return None if self.matrix is None else self.matrix.compute().long().tolist()

    def reset(self) -> None:
        self.summary.reset()
        self.per_output.reset()
        if self.matrix is not None:
            self.matrix.reset()
