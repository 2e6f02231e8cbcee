"""Random frozen backbones without a full-precision copy: built on ``meta``, pruned, then materialised block by
block in their dtype and initialised by transformers' own ``_init_weights``.

Every module is initialised under its own seed, derived from ``init_seed`` and the module's qualified name, so
a weight does not depend on what else the model holds: dropping the token embedding, or building 2 of the 32
layers, leaves every other weight as it is. Each block (a ``ModuleList`` element such as a decoder layer, or a
direct child of the model) is materialised on the CPU, initialised with the CPU generator, checked, optionally
converted (quantised), then moved to the target device, so the weights are the same on every device and the
CPU never holds more than one block when the target is a GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

BlockHook = Callable[[str, nn.Module], None]


def build_on_meta(model_class: Any, config: Any, dtype: torch.dtype, attn_implementation: str) -> nn.Module:
    """``model_class._from_config(config)`` with every tensor on the ``meta`` device (no memory, no init).

    ``model_class`` may be a transformers auto class (``AutoModel``): the config's ``model_type`` picks the model.
    """
    factory = getattr(model_class, "_from_config", None) or model_class.from_config
    with torch.device("meta"):
        return factory(config, dtype=dtype, attn_implementation=attn_implementation)


def drop_submodules(model: nn.Module, names: Iterable[str]) -> int:
    """Set each named submodule (e.g. ``embed_tokens``) to ``None``; returns how many parameters went with them.

    Names the model does not have (or already holds as ``None``) are skipped.
    """
    dropped = 0
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        sub = getattr(parent, attr, None)
        if sub is None:
            continue
        if not isinstance(sub, nn.Module):
            raise TypeError(f"cannot drop {name!r}: it is a {type(sub).__name__}, not a module")
        dropped += sum(p.numel() for p in sub.parameters())
        setattr(parent, attr, None)
    return dropped


def module_seed(seed: int, name: str) -> int:
    """The seed of the module called ``name`` (stable across runs, Python versions and machines)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def materialize(model: nn.Module, seed: int | None, device: torch.device | str | None = None,
                on_block: BlockHook | None = None) -> None:
    """Give every ``meta`` tensor of ``model`` memory in its dtype and initialise it (in place).

    ``model`` is a transformers ``PreTrainedModel`` built on ``meta``; its ``_init_weights`` (which in
    transformers 5 also recomputes non-persistent buffers such as rotary ``inv_freq`` and CLIP's
    ``position_ids``) initialises each module under ``module_seed(seed, name)`` (``seed=None``: the caller's
    RNG, in module order). ``on_block(name, block)`` runs on each initialised block before it moves to
    ``device`` (default: the current default device). A tensor that no initialiser wrote raises ``RuntimeError``:
    ``to_empty`` fills tensors with NaN (integers with their minimum) first, so nothing can stay uninitialised.
    """
    target = torch.device(device) if device is not None else torch.get_default_device()
    if target.type == "meta":
        raise ValueError("materialize needs a real device, not meta")
    blocks = {id(m) for parent in model.modules() if isinstance(parent, nn.ModuleList) for m in parent}
    blocks |= {id(m) for m in model.children()}
    finished: set[int] = set()  # modules already checked (and converted) as part of an inner block

    def finish(name: str, block: nn.Module) -> None:
        for module_name, module in block.named_modules():
            if id(module) not in finished:
                _check_initialised(module, _join(name, module_name), type(model).__name__)
        if on_block is not None:
            on_block(name, block)
        if target.type != "cpu":
            block.to(target)
        finished.update(id(m) for m in block.modules())

    def walk(module: nn.Module, name: str, init_fn: Callable[[nn.Module], None]) -> None:
        for child_name, child in module.named_children():
            child_init = getattr(child, "_init_weights", init_fn) if _is_pretrained_model(child) else init_fn
            walk(child, f"{name}.{child_name}" if name else child_name, child_init)
        _empty_on_cpu(module)
        if seed is not None:
            torch.default_generator.manual_seed(module_seed(seed, name))
        init_fn(module)
        if id(module) in blocks:
            finish(name, module)

    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng, _guard_init_functions():
        walk(model, "", model._init_weights)
    finish("", model)
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def _is_pretrained_model(module: nn.Module) -> bool:
    from transformers import PreTrainedModel

    return isinstance(module, PreTrainedModel)


def _guard_init_functions() -> contextlib.AbstractContextManager[Any]:
    """transformers' guard that routes ``torch.nn.init`` through its own (flag-aware) functions, if present."""
    try:
        from transformers import initialization
    except ImportError:  # transformers 4.x
        return contextlib.nullcontext()
    return initialization.guard_torch_init_functions()


def _empty_on_cpu(module: nn.Module) -> None:
    """Memory for the module's own ``meta`` parameters and buffers on the CPU, filled with a sentinel."""
    for store in (module._parameters, module._buffers):
        for key, tensor in store.items():
            if tensor is None or tensor.device.type != "meta":
                continue
            empty = torch.empty_like(tensor, device="cpu")
            _fill_sentinel(empty)
            if isinstance(tensor, nn.Parameter):
                store[key] = nn.Parameter(empty, requires_grad=tensor.requires_grad)
            else:
                store[key] = empty


def _fill_sentinel(tensor: torch.Tensor) -> None:
    if tensor.is_floating_point() or tensor.is_complex():
        tensor.fill_(float("nan"))
    elif tensor.dtype != torch.bool:
        tensor.fill_(torch.iinfo(tensor.dtype).min)


def _is_sentinel(tensor: torch.Tensor) -> bool:
    if tensor.is_floating_point() or tensor.is_complex():
        return bool(torch.isnan(tensor).any())
    if tensor.dtype == torch.bool or not tensor.numel():
        return False
    return bool((tensor == torch.iinfo(tensor.dtype).min).any())


def _check_initialised(module: nn.Module, name: str, model_name: str) -> None:
    """Raise if one of the module's own tensors is still on ``meta`` or holds the sentinel."""
    own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    for tensor_name, tensor in own:
        if tensor.device.type == "meta":
            raise RuntimeError(f"{_join(name, tensor_name)} of {model_name} is still on the meta device")
        if _is_sentinel(tensor):
            raise RuntimeError(
                f"{_join(name, tensor_name)} of {model_name} was not initialised by {model_name}._init_weights "
                "(NaN or empty memory left); this transformers version cannot build it without weights "
                "(transformers 5 can), or load pretrained weights instead")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
