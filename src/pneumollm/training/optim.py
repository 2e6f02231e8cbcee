"""AdamW with weight-decay groups and the per-iteration cosine schedule with linear warm-up (METHOD.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from timm.scheduler.scheduler import Scheduler


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in a decayed group and a no-decay group (biases and 1-D parameters): timm's
    ``param_groups_weight_decay``, with the decayed group first (the order checkpoints' optimizer states have)."""
    from timm.optim import param_groups_weight_decay

    groups = param_groups_weight_decay(model, weight_decay)
    return sorted(groups, key=lambda g: g["weight_decay"] == 0.0)


def build_adamw(params: Iterable[dict], lr: float = 3e-4, betas: tuple[float, float] = (0.9, 0.95),
                eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over prepared parameter groups (each group carries its own weight decay)."""
    return torch.optim.AdamW([g for g in params if g["params"]], lr=lr, betas=tuple(betas), eps=eps)


def build_warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                        warmup_epochs: float = 2.0, warmup_lr: float = 5e-7,
                        min_lr: float = 1e-7) -> Scheduler:
    """The reference schedule, per iteration: linear warm-up from ``warmup_lr`` to the optimizer's lr over
    ``warmup_epochs`` epochs, then a cosine down to ``min_lr`` at ``total_steps`` (timm's ``CosineLRScheduler``,
    stepped with ``step_update(iteration)``; the LightningModule does that after every optimizer step)."""
    from timm.scheduler import CosineLRScheduler

    warmup_steps = min(total_steps, round(warmup_epochs * steps_per_epoch))
    cosine_steps = max(1, total_steps - warmup_steps)
    quiet = logging.getLogger("timm.scheduler.cosine_lr")  # warns for a one-step cosine (debug runs of one batch)
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return CosineLRScheduler(optimizer, t_initial=cosine_steps, lr_min=min_lr, warmup_t=warmup_steps,
                                 warmup_lr_init=warmup_lr, warmup_prefix=True, t_in_epochs=False)
    finally:
        quiet.setLevel(level)
