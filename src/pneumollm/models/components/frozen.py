"""Helpers for frozen backbones: weight dtype choice, freezing, reproducible random initialisation."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Frozen-weight dtype from a config value; ``auto`` = bfloat16 when CUDA is available, else float32."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown frozen_dtype {name!r}; choose auto or one of {sorted(DTYPES)}")
    return DTYPES[name]


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter of ``module`` (in place) and return it."""
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def autocast_dtype_or(device: torch.device, fallback: torch.dtype) -> torch.dtype:
    """The dtype matmuls run in on ``device``: autocast's when it is on, else ``fallback``."""
    device_type = device.type
    if device_type in {"cuda", "cpu", "xpu", "mps"} and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return fallback


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block with the CPU RNG seeded to ``seed`` and restore the caller's RNG afterwards.

    Random "pretrained" stand-ins (tiny models, offline architecture builds) are then identical in every
    fold and run, independently of the global seed. ``None`` leaves the RNG alone.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each layer of a transformers model in the backward pass instead of storing its activations.

    Non-reentrant (``use_reentrant=False``): reentrant checkpointing returns outputs without gradients when no
    input of a layer requires them, which is the case in a frozen tower fed with images, so the adapters inside
    would get none. Non-reentrant checkpointing also restores the RNG state, so dropout masks match.
    """
    from transformers.utils import logging as hf_logging

    kwargs = {"use_reentrant": False}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a trunk without token embeddings warns that they cannot get gradients
    try:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def frozen_tensor_fingerprints(net: torch.nn.Module) -> dict[str, str]:
    """Per frozen tensor: its shape and a hash of up to 4,096 of its values spread over the tensor (cheap at 7B)."""
    prints = {}
    for name, param in net.named_parameters():
        if param.requires_grad or param.device.type == "meta":
            continue
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step][:4096].float().cpu().contiguous()
        digest = hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:16]
        prints[name] = f"{tuple(param.shape)}:{digest}"
    return prints
