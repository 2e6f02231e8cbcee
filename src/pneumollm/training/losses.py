"""Classification losses, each paired with the way it turns logits into P(pneumoconiosis).

P(pneumoconiosis) is "any pneumoconiosis" whatever the task: the positive class of a binary head, the sum of the
stage >= 1 probabilities of a staged (multi-class) head, the primary finding's sigmoid of a multi-label head.
``loss=auto`` (the default) picks the task's loss: the paper's ``bce2`` for binary, ``ce`` for stages and
``bce_multilabel`` for findings; an explicit loss that cannot train the task is refused (``check_loss_for_task``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pneumollm.data.targets import BINARY, MULTICLASS, MULTILABEL, TASKS
from pneumollm.errors import ConfigError


class ClassificationLoss(nn.Module):
    """A loss over logits [B, C] and integer targets [B], plus the matching positive-class probability."""

    positive_index: int = 1
    tasks: tuple[str, ...] = (BINARY, MULTICLASS)  # the tasks whose targets this loss trains on

    def positive_columns(self, num_outputs: int) -> list[int]:
        """The outputs whose probabilities add up to P(pneumoconiosis): the positive class of two, else every
        stage after the first (stages are ordinal, the first is "no pneumoconiosis")."""
        return [self.positive_index] if num_outputs == 2 else list(range(1, num_outputs))

    def output_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """One probability per output [B, C]: softmax over the classes."""
        return logits.float().softmax(dim=-1)

    def positive_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """P(pneumoconiosis) per sample: softmax over the classes, summed over ``positive_columns``."""
        return self.output_probabilities(logits)[:, self.positive_columns(logits.shape[-1])].sum(dim=-1)

    def positive_log_odds(self, logits: torch.Tensor) -> torch.Tensor:
        """log(p / (1 - p)) of ``positive_probability`` per sample, from the logits: the log-sum-exp of the positive
        columns' logits minus that of the others (l1 - l0 for two), finite where p itself rounds to 0 or 1."""
        logits = logits.float()
        columns = self.positive_columns(logits.shape[-1])
        rest = [k for k in range(logits.shape[-1]) if k not in columns]
        return logits[:, columns].logsumexp(dim=-1) - logits[:, rest].logsumexp(dim=-1)


class OneHotBCELoss(ClassificationLoss):
    """``bce2``: binary cross-entropy on each logit against a one-hot target, as in the reference code.

    Prediction still uses the softmax over the logits (argmax), as the reference does.
    """

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(target.long(), self.num_classes).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, one_hot)


class CrossEntropyLoss(ClassificationLoss):
    """``ce``: softmax cross-entropy (the paper's choice for multi-class tasks)."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target.long(), label_smoothing=self.label_smoothing)


class MultiLabelBCELoss(ClassificationLoss):
    """``bce_multilabel``: one sigmoid per label; targets are multi-hot [B, C] (or class indices for C=2).

    ``positive_index``: the output whose sigmoid is P(pneumoconiosis): 1 for a binary two-output head, 0 (the
    primary finding) for a multi-label task.
    """

    tasks = (BINARY, MULTILABEL)

    def __init__(self, positive_index: int = 1) -> None:
        super().__init__()
        self.positive_index = positive_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 1:
            target = F.one_hot(target.long(), logits.shape[-1])
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))

    def positive_columns(self, num_outputs: int) -> list[int]:
        return [self.positive_index]

    def output_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def positive_probability(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()[:, self.positive_index]

    def positive_log_odds(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float()[:, self.positive_index]


def positive_log_odds(loss: object, logits: torch.Tensor) -> torch.Tensor:
    """The log-odds of ``loss.positive_probability(logits)``: from the logits where the loss defines them along with
    (or after) its probability, else ``logit(p)`` of its probability in float64 (infinite where p is 0 or 1)."""
    def definer(name: str) -> int:
        return next((k for k, cls in enumerate(type(loss).__mro__) if name in vars(cls)), len(type(loss).__mro__))

    if hasattr(loss, "positive_log_odds") and definer("positive_log_odds") <= definer("positive_probability"):
        return loss.positive_log_odds(logits)  # type: ignore[attr-defined]
    return torch.logit(loss.positive_probability(logits).double())  # type: ignore[attr-defined]


def loss_for_task(task: str = BINARY, num_outputs: int = 2) -> ClassificationLoss:
    """``loss=auto``: the paper's one-hot BCE for the binary task, cross-entropy over stages, one sigmoid per
    finding (the primary finding, output 0, gives P(pneumoconiosis))."""
    if task == BINARY:
        return OneHotBCELoss(num_classes=num_outputs)
    if task == MULTICLASS:
        return CrossEntropyLoss()
    if task == MULTILABEL:
        return MultiLabelBCELoss(positive_index=0)
    raise ConfigError(f"data.task must be one of {', '.join(TASKS)}, got {task!r}")


def check_loss_for_task(loss: nn.Module, task: str, choice: str | None = None) -> None:
    """Refuse a loss that cannot train ``task`` (e.g. one sigmoid per stage, or a softmax over findings)."""
    tasks = getattr(loss, "tasks", None)
    if tasks is None or task in tasks:
        if task == MULTILABEL and getattr(loss, "positive_index", 0) != 0:
            raise ConfigError(f"loss={choice or type(loss).__name__} with data.task=multilabel must take "
                              "P(pneumoconiosis) from the primary finding: set loss.positive_index=0 (loss=auto does)")
        return
    fitting = {BINARY: "bce2, ce or bce_multilabel", MULTICLASS: "ce or bce2", MULTILABEL: "bce_multilabel"}[task]
    raise ConfigError(f"loss={choice or type(loss).__name__} cannot train data.task={task} (its targets are "
                      f"{'findings, one 0/1 per output' if task == MULTILABEL else 'one class per film'}): use "
                      f"loss=auto (the task's own loss) or one of {fitting}")
