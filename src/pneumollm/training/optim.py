"""AdamW with weight-decay groups and the per-iteration cosine schedule with linear warm-up (METHOD.md)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed group and a no-decay group (biases and 1-D parameters)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_adamw(params: Iterable[dict], lr: float = 3e-4, betas: tuple[float, float] = (0.9, 0.95),
                eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over prepared parameter groups (each group carries its own weight decay)."""
    return torch.optim.AdamW([g for g in params if g["params"]], lr=lr, betas=tuple(betas), eps=eps)


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, warmup_lr: float,
                     min_lr: float) -> float:
    """Learning rate at ``step``: linear from ``warmup_lr`` to ``base_lr``, then cosine down to ``min_lr``."""
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                        warmup_epochs: float = 2.0, warmup_lr: float = 5e-7,
                        min_lr: float = 1e-7) -> torch.optim.lr_scheduler.LambdaLR:
    """The reference schedule, stepped every iteration; warm-up length is given in epochs."""
    base_lr = optimizer.param_groups[0]["lr"]
    warmup_steps = min(total_steps, round(warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        return warmup_cosine_lr(step, total_steps, warmup_steps, base_lr, warmup_lr, min_lr) / base_lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
