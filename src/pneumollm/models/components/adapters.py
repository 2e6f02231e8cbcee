"""Parameter-efficient adapters for frozen transformers: RepAdapter (with folding) and peft LoRA.

RepAdapter sits on the normalised input of every attention sub-layer: the norm module in front of the
attention is replaced by ``AdaptedNorm(norm, adapter)``, so no transformers/timm code is copied.
Because the adapter is linear, ``fold_repadapter`` merges it into the q/k/v projections that read that
input and puts the bare norm back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from pneumollm.models.components.quantization import is_quantized

ADAPTER_KINDS = ("repadapter", "lora", "none")


@dataclass(frozen=True)
class AdapterSpec:
    """Which adapter to put into a frozen transformer, and its sizes.

    ``kind``: ``repadapter`` (Luo et al. 2023, the paper's), ``lora`` (peft, on ``lora_targets``) or ``none``.
    ``hidden``/``groups``/``dropout`` size the RepAdapter; ``dropout`` is also LoRA's dropout.
    """

    kind: str = "repadapter"
    hidden: int = 8
    groups: int = 2
    dropout: float = 0.1
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = field(default=("q_proj", "k_proj", "v_proj"))

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ValueError(f"unknown adapter kind {self.kind!r}; choose one of {ADAPTER_KINDS}")

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | AdapterSpec | None, allowed: Sequence[str] = ADAPTER_KINDS,
              default_kind: str = "repadapter") -> AdapterSpec:
        """Build from a config mapping; ``enabled: true/false`` is shorthand for ``kind: repadapter/none``."""
        if isinstance(spec, AdapterSpec):
            parsed = spec
        else:
            values = dict(spec or {})
            known = {f.name for f in fields(cls)} | {"enabled"}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ValueError(f"unknown adapter option(s) {unknown}; known: {sorted(known)}")
            enabled = values.pop("enabled", None)
            if enabled is not None and "kind" not in values:
                values["kind"] = default_kind if enabled else "none"
            elif enabled is False:
                values["kind"] = "none"
            values.setdefault("kind", default_kind)
            if "lora_targets" in values:
                values["lora_targets"] = tuple(values["lora_targets"])
            parsed = cls(**values)
        if parsed.kind not in allowed:
            raise ValueError(f"adapter kind {parsed.kind!r} is not available here; choose one of {tuple(allowed)}")
        return parsed


class GroupedLinear(nn.Module):
    """Block-diagonal linear map: each of ``groups`` input slices feeds its own output slice.

    Hand-written: torch has no grouped Linear (Conv1d with groups would need transposes).
    """

    def __init__(self, in_features: int, out_features: int, groups: int, bias: bool = True) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"in_features={in_features} and out_features={out_features} must both be "
                             f"divisible by groups={groups}")
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.weight = nn.Parameter(torch.empty(groups, out_features // groups, in_features // groups))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = x.unflatten(-1, (self.groups, self.in_features // self.groups))
        out = torch.einsum("...gi,goi->...go", grouped, self.weight.to(grouped.dtype)).flatten(-2)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense [out_features, in_features] matrix."""
        return torch.block_diag(*self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, groups={self.groups}"


class RepAdapter(nn.Module):
    """``x + U(dropout(D x))``: D dense dim->hidden (xavier), U grouped hidden->dim (zero init: identity).

    Runs in its own (fp32) parameter dtype and returns the input's dtype, so it can sit inside a
    half-precision frozen model with or without autocast.
    """

    def __init__(self, dim: int, hidden: int = 8, groups: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.up = GroupedLinear(hidden, dim, groups)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.up(self.dropout(self.down(x.to(self.down.weight.dtype))))
        return x + delta.to(x.dtype)

    @torch.no_grad()
    def affine(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U, D, c) with ``adapter(x) = x + U D x + c`` in eval mode, in float64: the map I + U D is the identity
        plus a rank-``hidden`` term, which is what makes folding cheap; c = U b_D + b_U."""
        down_w, down_b = self.down.weight.double(), self.down.bias.double()
        up_w, up_b = self.up.dense_weight().double(), self.up.bias.double()
        return up_w, down_w, up_w @ down_b + up_b


class AdaptedNorm(nn.Module):
    """A normalisation layer followed by a RepAdapter (the input of an attention sub-layer)."""

    def __init__(self, norm: nn.Module, adapter: RepAdapter) -> None:
        super().__init__()
        self.norm = norm
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.norm(x))


@dataclass(frozen=True)
class AdapterSite:
    """Where an adapter goes: ``block.<norm>`` feeds the linear layers ``block.<targets>`` (q, k, v)."""

    block: nn.Module
    norm: str
    targets: tuple[str, ...]


HF_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # transformers' CLIP and Llama layers


def attention_sites(layers: Iterable[nn.Module], norm: str,
                    targets: tuple[str, ...] = HF_QKV) -> Iterator[AdapterSite]:
    """The adapter site of every layer: its ``norm`` before self-attention, feeding the q/k/v ``targets``."""
    for layer in layers:
        yield AdapterSite(layer, norm, targets)


def attach_adapters(sites: Iterable[AdapterSite], make_adapter: Callable[[], nn.Module]) -> int:
    """Wrap every site's norm in ``AdaptedNorm`` with a fresh fp32 adapter from ``make_adapter``; returns how many."""
    count = 0
    for site in sites:
        norm = site.block.get_submodule(site.norm)
        if isinstance(norm, AdaptedNorm):
            raise RuntimeError(f"{site.norm} already carries an adapter")
        device = next(norm.parameters(), torch.empty(0)).device
        adapter = make_adapter().to(device=device, dtype=torch.float32)
        _set_submodule(site.block, site.norm, AdaptedNorm(norm, adapter))
        count += 1
    return count


def attach_repadapters(sites: Iterable[AdapterSite], dim: int, spec: AdapterSpec) -> int:
    """Wrap every site's norm in ``AdaptedNorm`` with a fresh fp32 RepAdapter; returns how many."""
    return attach_adapters(sites, lambda: RepAdapter(dim, spec.hidden, spec.groups, spec.dropout))


@torch.no_grad()
def fold_affine_into_linear(linear: nn.Linear, up: torch.Tensor, down: torch.Tensor, offset: torch.Tensor) -> None:
    """Rewrite ``linear`` so that ``linear'(x) = linear(x + U D x + c)``: W' = W + (W U) D, b' = b + W c.

    In float64, and through the low-rank factors: W (I + U D) as a dense product would cost dim^3 operations per
    layer (minutes at LLaMA's width on a CPU), (W U) D costs dim^2 * hidden.
    """
    weight = linear.weight.double()
    new_weight = weight + (weight @ up) @ down
    new_bias = weight @ offset
    if linear.bias is not None:
        new_bias = new_bias + linear.bias.double()
    linear.weight.copy_(new_weight.to(linear.weight.dtype))
    if linear.bias is None:
        linear.bias = nn.Parameter(new_bias.to(linear.weight.dtype), requires_grad=False)
    else:
        linear.bias.copy_(new_bias.to(linear.bias.dtype))


def fold_repadapters(sites: Iterable[AdapterSite]) -> int:
    """Merge each site's RepAdapter into its target linears and restore the bare norm; returns how many.

    Exact for the eval-mode function (dropout off). Sites without an adapter are skipped.
    """
    count = 0
    for site in sites:
        wrapped = site.block.get_submodule(site.norm)
        if not isinstance(wrapped, AdaptedNorm):
            continue
        if not isinstance(wrapped.adapter, RepAdapter):
            raise TypeError(f"{site.norm}: a {type(wrapped.adapter).__name__} depends on its input and cannot be "
                            "folded into the linear layers; only RepAdapters fold")
        up, down, offset = wrapped.adapter.affine()
        for target in site.targets:
            linear = site.block.get_submodule(target)
            if is_quantized(linear):
                raise RuntimeError(f"cannot fold a RepAdapter into {target}: its weights are quantised "
                                   f"({type(linear).__name__}) and a folded weight needs full precision")
            if not isinstance(linear, nn.Linear):
                raise TypeError(f"cannot fold a RepAdapter into {target} of type {type(linear).__name__}")
            device = linear.weight.device
            fold_affine_into_linear(linear, up.to(device), down.to(device), offset.to(device))
        _set_submodule(site.block, site.norm, wrapped.norm)
        count += 1
    return count


def attach_lora(model: nn.Module, spec: AdapterSpec) -> int:
    """Inject peft LoRA into ``model``'s ``spec.lora_targets``; only the LoRA weights (fp32) train.

    Returns the number of LoRA parameters.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.lora_targets), bias="none")
    inject_adapter_in_model(config, model)
    count = 0
    for name, param in model.named_parameters():
        is_lora = "lora_" in name
        param.requires_grad_(is_lora)
        if is_lora:
            param.data = param.data.float()
            count += param.numel()
    if count == 0:
        raise ValueError(f"LoRA found none of the target modules {spec.lora_targets}")
    return count


def merge_lora(model: nn.Module) -> int:
    """Merge every peft LoRA layer of ``model`` into its base weights (inference); returns how many."""
    from peft.tuners.lora import LoraLayer

    count = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            if is_quantized(module.get_base_layer()):
                raise RuntimeError(f"cannot merge LoRA into the quantised {type(module.get_base_layer()).__name__}: "
                                   "a merged weight needs full precision")
            module.merge()
            count += 1
    return count


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)
