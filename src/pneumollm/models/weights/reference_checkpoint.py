"""The authors' published PneumoLLM weights (``trainable_bestvalpt.pth`` of CodeMonsterPHD/PneumoLLM) in this
suite's names, shapes and settings.

The reference training saves ``{'model', 'optimizer', 'epoch', 'lr_scheduler', 'args'}``: ``model`` holds every
parameter whose name contains ``adapter`` or ``prompt`` (fp32), ``args`` the run's ``argparse.Namespace``. Key
patterns (``i`` a block or layer index) and where they go in ``PneumoLLM``:

- ``backbone.visual.transformer.resblocks.i.adapter_attn.conv_A.*`` -> ``encoder.model.encoder.layers.i.layer_norm1
  .adapter.down.*``; ``conv_D.*`` -> ``...adapter.up.*`` (the CLIP adapters)
- ``layers.i.adapter_attn.conv_A.*`` / ``conv_D.*`` -> ``llm.model.layers.i.input_layernorm.adapter.down.*`` /
  ``up.*`` (the LLaMA adapters)
- ``prompt_meta_net.linear1.*`` / ``linear2.*`` -> ``token_engine.scorer.0.*`` / ``scorer.2.*`` (the CMTE's MLP)
- ``adapter_proj.conv_A.*`` / ``conv_B.*`` -> ``neck.layers.0.*`` / ``neck.layers.2.*`` (the neck, ``nn.Linear`` there)
- ``adapter_output_cls.weight`` -> ``head.linear.weight``

Shapes: a pointwise ``Conv1d`` weight ``[out, in, 1]`` is the ``Linear`` weight ``[out, in]``; the up-projection is
a ``Conv1d`` with ``g`` groups, ``[W, h/g, 1]``, whose output channels ``j*W/g ...`` read input channels
``j*h/g ...``, which is ``GroupedLinear``'s ``[g, W/g, h/g]`` after a reshape; the head's two rows are swapped
(the reference's output 0 is pneumoconiosis, the suite's output 1).
"""

from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pneumollm.errors import UserError

ENCODER_ADAPTER = "encoder.model.encoder.layers.{}.layer_norm1.adapter"
LLM_ADAPTER = "llm.model.layers.{}.input_layernorm.adapter"
HEAD_WEIGHT = "head.linear.weight"
_REFERENCE_ADAPTERS = {
    "visual": re.compile(r"^backbone\.visual\.transformer\.resblocks\.(\d+)\.adapter_attn\.(conv_A|conv_D)\."
                         r"(weight|bias)$"),
    "llm": re.compile(r"^layers\.(\d+)\.adapter_attn\.(conv_A|conv_D)\.(weight|bias)$"),
}
_SUITE_ADAPTERS = {
    "visual": re.compile(r"^encoder\.model\.encoder\.layers\.(\d+)\.layer_norm1\.adapter\.(down|up)\.(weight|bias)$"),
    "llm": re.compile(r"^llm\.model\.layers\.(\d+)\.input_layernorm\.adapter\.(down|up)\.(weight|bias)$"),
}
_REFERENCE_PREFIX = {"visual": "backbone.visual.transformer.resblocks.{}.adapter_attn", "llm": "layers.{}.adapter_attn"}
_SUITE_PREFIX = {"visual": ENCODER_ADAPTER, "llm": LLM_ADAPTER}
_TO_SUITE_PART = {"conv_A": "down", "conv_D": "up"}
_TO_REFERENCE_PART = {v: k for k, v in _TO_SUITE_PART.items()}
_FIXED = {
    "prompt_meta_net.linear1.weight": "token_engine.scorer.0.weight",
    "prompt_meta_net.linear1.bias": "token_engine.scorer.0.bias",
    "prompt_meta_net.linear2.weight": "token_engine.scorer.2.weight",
    "prompt_meta_net.linear2.bias": "token_engine.scorer.2.bias",
    "adapter_proj.conv_A.weight": "neck.layers.0.weight",
    "adapter_proj.conv_A.bias": "neck.layers.0.bias",
    "adapter_proj.conv_B.weight": "neck.layers.2.weight",
    "adapter_proj.conv_B.bias": "neck.layers.2.bias",
    "adapter_output_cls.weight": HEAD_WEIGHT,
}
_FIXED_BACK = {v: k for k, v in _FIXED.items()}
# The reference's adapter up-projection: groups=2, hard-coded in its RepAdapter_Router.
REFERENCE_GROUPS = 2
# train_acc.py's defaults, used for an argument a checkpoint's args lack (recorded as defaulted).
REFERENCE_DEFAULTS: dict[str, Any] = {"multiscale": 4, "RPO_K": 4, "adapter_dim": 8, "hidden_proj": 128,
                                      "adapter_type": "attn", "visual_adapter_type": "router", "bits": "16bit"}
_BITS = {"16bit": None, "8bit": "int8", "4bit": "nf4"}
_SHOWN = 5  # names listed per kind of problem


class ReferenceCheckpointError(UserError):
    """A reference checkpoint that cannot be imported as given (names the file, the problem and what to do)."""


@dataclass(frozen=True)
class ReferenceCheckpoint:
    """What a reference checkpoint holds: the trained tensors (reference names), the run's args, its epoch."""

    path: Path
    state: dict[str, torch.Tensor]
    args: dict[str, Any]
    epoch: int | None


@dataclass(frozen=True)
class Quirk:
    """A way the reference differs from the suite's defaults, and the setting (or weight rule) that reproduces it."""

    setting: str
    value: Any
    why: str
    config: bool = True  # a config setting (False: a rule applied to the weights)


REFERENCE_QUIRKS: tuple[Quirk, ...] = (
    Quirk("token_engine.freeze", True, "the reference never trained its CMTE MLP (a parameter-selection bug): the "
          "checkpoint holds its random initialisation, which a frozen engine keeps"),
    Quirk("encoder.normalization", "imagenet", "the reference normalised films with ImageNet's mean and std, not "
          "CLIP's statistics"),
    Quirk("encoder.frozen_dtype", "float16", "the reference ran the frozen CLIP tower in half precision"),
    Quirk("llm.frozen_dtype", "float16", "the reference ran the frozen LLaMA in half precision"),
    Quirk(HEAD_WEIGHT, "rows swapped", "the reference's output 0 is pneumoconiosis, the suite's output 1",
          config=False),
)


@dataclass(frozen=True)
class ReferenceSettings:
    """The architecture settings of a reference run (from its args) that the suite's config must repeat."""

    multiscale: int  # CLS token after every multiscale-th CLIP block
    diagnosis_tokens: int  # RPO_K: the CMTE's m
    adapter_hidden: int  # adapter_dim: both towers' RepAdapter bottleneck
    neck_hidden: int  # hidden_proj: the neck's bottleneck
    quantization: str | None  # bits: the frozen LLaMA's storage during training
    defaulted: tuple[str, ...] = ()  # args the checkpoint lacked (train_acc.py's defaults were used)

    def config_values(self) -> dict[str, Any]:
        """Config keys and values (dotted, the train config's layout) of these settings and the reference's quirks."""
        values: dict[str, Any] = {
            "encoder.multiscale": self.multiscale, "encoder.adapter.enabled": True,
            "encoder.adapter.hidden": self.adapter_hidden, "llm.adapter.kind": "repadapter",
            "llm.adapter.hidden": self.adapter_hidden, "token_engine.m": self.diagnosis_tokens,
            "neck.hidden": self.neck_hidden, "llm.quantization": self.quantization, "emitter.mode": "emitter",
            "data.task": "binary"}
        values.update({q.setting: q.value for q in REFERENCE_QUIRKS if q.config})
        return values


def load_reference_checkpoint(path: str | Path) -> ReferenceCheckpoint:
    """Read a reference checkpoint without running code from it: tensors, plain containers and
    ``argparse.Namespace`` only (``torch.load(weights_only=True)``); anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceCheckpointError(f"{path}: no such file (give the reference's trainable_bestvalpt.pth)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise ReferenceCheckpointError(f"{path}: not a readable torch checkpoint ({str(err).splitlines()[0]})"
                                           ) from None
        raise ReferenceCheckpointError(
            f"{path}: refused: the file contains a pickled {found.group(1)}, and only tensors, plain containers and "
            "argparse.Namespace are read (torch.load with weights_only=True; nothing from the file was run). A "
            "checkpoint saved by the reference's train_acc.py holds nothing else: re-save a modified file as "
            "{'model': state_dict, 'args': argparse.Namespace(...)}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise ReferenceCheckpointError(f"{path}: not a readable torch checkpoint ({str(err).splitlines()[0]})"
                                       ) from None
    if not isinstance(raw, Mapping) or "model" not in raw:
        keys = sorted(map(str, raw)) if isinstance(raw, Mapping) else type(raw).__name__
        raise ReferenceCheckpointError(f"{path}: no 'model' entry (found {keys}); the reference saves "
                                       "{'model', 'optimizer', 'epoch', 'lr_scheduler', 'args'}")
    state = raw["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ReferenceCheckpointError(f"{path}: 'model' is not a mapping of names to tensors")
    args = raw.get("args")
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, Mapping):
        raise ReferenceCheckpointError(f"{path}: no 'args' (the reference run's argparse.Namespace); the settings "
                                       "multiscale, RPO_K, adapter_dim and hidden_proj are read from it")
    epoch = raw.get("epoch")
    return ReferenceCheckpoint(path, {str(k): v for k, v in state.items()}, dict(args),
                               int(epoch) if isinstance(epoch, int) else None)


def reference_settings(args: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: str = "checkpoint"
                       ) -> ReferenceSettings:
    """The settings of a reference run, refusing (naming the arg) what the suite's PneumoLLM cannot represent."""
    values = {k: args.get(k, default) for k, default in REFERENCE_DEFAULTS.items()}
    defaulted = tuple(k for k in REFERENCE_DEFAULTS if k not in args)
    _check_adapter_types(values, state, where)
    for key in ("multiscale", "RPO_K", "adapter_dim", "hidden_proj"):
        if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 1:
            why = (" (with no diagnosis tokens the reference's mask blocks every column: its logits are NaN)"
                   if key == "RPO_K" and values[key] == 0 else "")
            raise ReferenceCheckpointError(f"{where}: args.{key}={values[key]!r} must be a positive integer{why}")
    if values["adapter_dim"] % REFERENCE_GROUPS:
        raise ReferenceCheckpointError(f"{where}: args.adapter_dim={values['adapter_dim']} is not divisible by the "
                                       f"adapters' {REFERENCE_GROUPS} groups")
    if values["bits"] not in _BITS:
        raise ReferenceCheckpointError(f"{where}: args.bits={values['bits']!r} is none of {sorted(_BITS)} (the "
                                       "reference's choices), so the LLaMA's storage during training is unknown")
    return ReferenceSettings(multiscale=values["multiscale"], diagnosis_tokens=values["RPO_K"],
                             adapter_hidden=values["adapter_dim"], neck_hidden=values["hidden_proj"],
                             quantization=_BITS[values["bits"]], defaulted=defaulted)


_NO_RESIDUAL = ("the reference's RepAdapter (conv_A/conv_B) returns U(D x) without adding x back, while this suite's "
                "RepAdapter (like the reference's default RepAdapter_Router, conv_A/conv_D) computes x + U(D x); "
                "converting the weights would change the function they were trained for. Only checkpoints of "
                "visual_adapter_type=router can be imported")
_MLP_ADAPTERS = ("adapters before the {tower}'s MLP sub-layers too (adapter_mlp); this suite's PneumoLLM has adapters "
                 "before attention only, so those weights have no place in it. Only checkpoints of adapter_type=attn "
                 "and visual_adapter_type=router can be imported")


def _check_adapter_types(values: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: str) -> None:
    visual, llm = values["visual_adapter_type"], values["adapter_type"]
    if visual == "normal" or any(".adapter_attn.conv_B." in k for k in state):
        source = "args.visual_adapter_type='normal'" if visual == "normal" else "its adapter_attn.conv_B tensors"
        raise ReferenceCheckpointError(f"{where}: refused ({source}): {_NO_RESIDUAL}")
    if visual == "router_block" or any(k.startswith("backbone.") and ".adapter_mlp." in k for k in state):
        raise ReferenceCheckpointError(f"{where}: refused (visual_adapter_type={visual!r}): the reference put "
                                       + _MLP_ADAPTERS.format(tower="CLIP tower"))
    if llm == "block" or any(k.startswith("layers.") and ".adapter_mlp." in k for k in state):
        raise ReferenceCheckpointError(f"{where}: refused (adapter_type={llm!r}): the reference put "
                                       + _MLP_ADAPTERS.format(tower="LLaMA"))
    if visual != "router":
        raise ReferenceCheckpointError(f"{where}: args.visual_adapter_type={visual!r} is none of the reference's "
                                       "choices (normal, router, router_block); only router can be imported")
    if llm != "attn":
        raise ReferenceCheckpointError(f"{where}: args.adapter_type={llm!r} is none of the reference's choices "
                                       "(block, attn); only attn can be imported")


def suite_name(reference_name: str) -> str | None:
    """The suite's parameter name for a reference tensor name (None: no counterpart)."""
    if reference_name in _FIXED:
        return _FIXED[reference_name]
    for tower, pattern in _REFERENCE_ADAPTERS.items():
        found = pattern.match(reference_name)
        if found:
            index, part, kind = found.groups()
            return f"{_SUITE_PREFIX[tower].format(index)}.{_TO_SUITE_PART[part]}.{kind}"
    return None


def reference_name(suite_parameter: str) -> str | None:
    """The reference's tensor name for a suite parameter name (None: no counterpart)."""
    if suite_parameter in _FIXED_BACK:
        return _FIXED_BACK[suite_parameter]
    for tower, pattern in _SUITE_ADAPTERS.items():
        found = pattern.match(suite_parameter)
        if found:
            index, part, kind = found.groups()
            return f"{_REFERENCE_PREFIX[tower].format(index)}.{_TO_REFERENCE_PART[part]}.{kind}"
    return None


def _is_down(name: str) -> bool:
    return name.endswith(".adapter.down.weight")


def _is_up(name: str) -> bool:
    return name.endswith(".adapter.up.weight")


def to_suite_tensor(suite_parameter: str, tensor: torch.Tensor, groups: int = REFERENCE_GROUPS
                    ) -> torch.Tensor | None:
    """A reference tensor in the layout of ``suite_parameter`` (float32); None when its form does not allow it."""
    tensor = tensor.detach().to(torch.float32)
    if _is_down(suite_parameter) or _is_up(suite_parameter):
        if tensor.dim() != 3 or tensor.shape[-1] != 1:
            return None
        tensor = tensor[..., 0]
        if _is_up(suite_parameter):
            if tensor.shape[0] % groups:
                return None
            tensor = tensor.reshape(groups, tensor.shape[0] // groups, tensor.shape[1])
    elif suite_parameter == HEAD_WEIGHT:
        if tensor.dim() != 2:
            return None
        tensor = tensor.flip(0)
    return tensor.contiguous()


def to_reference_tensor(suite_parameter: str, tensor: torch.Tensor) -> torch.Tensor:
    """A suite tensor in the reference's layout (the inverse of ``to_suite_tensor``)."""
    tensor = tensor.detach()
    if _is_up(suite_parameter):
        tensor = tensor.reshape(-1, tensor.shape[-1])
    if _is_down(suite_parameter) or _is_up(suite_parameter):
        return tensor.unsqueeze(-1).contiguous()
    if suite_parameter == HEAD_WEIGHT:
        return tensor.flip(0).contiguous()
    return tensor.contiguous()


def reference_shape(suite_parameter: str, shape: torch.Size | tuple[int, ...]) -> list[int]:
    """The reference's shape of a tensor that has ``shape`` in the suite."""
    return list(to_reference_tensor(suite_parameter, torch.empty(shape, device="meta")).shape)


def imported_parameter_shapes(net: nn.Module) -> dict[str, torch.Size]:
    """The parameters a reference checkpoint covers in ``net``: every trainable one, plus the token engine's
    (the frozen CMTE of an imported config keeps the reference's untrained values)."""
    return {n: p.shape for n, p in net.named_parameters() if p.requires_grad or n.startswith("token_engine.")}


def map_reference_state(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size],
                        where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The reference's tensors under the suite's names and in its layouts, exactly the ``expected`` ones.

    Refuses missing, unexpected and misshaped tensors, naming up to five of each in the reference's terms.
    """
    mapped: dict[str, torch.Tensor] = {}
    unexpected, misshaped, seen = [], [], set()
    for name, tensor in state.items():
        target = suite_name(name)
        if target is None or target not in expected:
            unexpected.append(f"{name} {list(tensor.shape)}")
            continue
        seen.add(target)
        want = expected[target]
        groups = want[0] if _is_up(target) and len(want) == 3 else REFERENCE_GROUPS
        converted = to_suite_tensor(target, tensor, groups)
        if converted is None or converted.shape != want:
            misshaped.append(f"{name} {list(tensor.shape)}, expected {reference_shape(target, want)}")
            continue
        mapped[target] = converted
    missing = [f"{reference_name(k) or k} {reference_shape(k, s)}" for k, s in expected.items() if k not in seen]
    problems = [f"{label} ({len(items)}): {', '.join(items[:_SHOWN])}{' ...' if len(items) > _SHOWN else ''}"
                for label, items in (("missing tensors", missing), ("unexpected tensors", unexpected),
                                     ("wrong shapes", misshaped)) if items]
    if problems:
        raise ReferenceCheckpointError(
            f"{where}: its tensors do not fit the PneumoLLM configured from its args: {'; '.join(problems)}. The "
            "reference's PneumoLLM is CLIP ViT-L/14 with LLaMA-7B (24 CLIP adapters of width 1024, 32 LLaMA adapters "
            "of width 4096); other base models need --set with their sizes")
    return mapped


def suite_to_reference_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The suite's parameters (names without ``net.``) as the reference's ``'model'`` entry: the inverse mapping."""
    out = {}
    for name, tensor in state.items():
        target = reference_name(name)
        if target is None:
            raise KeyError(f"{name} has no counterpart in the reference's checkpoint")
        out[target] = to_reference_tensor(name, tensor)
    return out
