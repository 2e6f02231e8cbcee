"""Loading pretrained Hugging Face weights by hub id or local folder, with errors a user can act on."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pneumollm.errors import UserError, WeightsMismatchError, WeightsNotFoundError

if TYPE_CHECKING:
    from pneumollm.models.components.quantization import QuantSpec


# Tensors that a checkpoint holds and a frozen tower leaves out on purpose, or that a tower may lack in a
# checkpoint because it never uses them: the only exceptions to "every tensor loads" (regexes on tensor names).
CLIP_TEXT_TOWER = r"^(text_model\.|text_projection\.|visual_projection\.|logit_scale$)"  # a whole CLIPModel's
TOKEN_EMBEDDING = r"(^|\.)embed_tokens\."  # LLM trunks take image tokens, never text: dropped after loading
LM_HEAD = r"^lm_head\."  # a causal LM checkpoint's output layer, which a trunk (the base model) does not hold


@dataclass(frozen=True)
class CheckpointRules:
    """What a checkpoint must be to load into a frozen tower: its ``config.json`` ``model_type`` (one of
    ``model_types``; ``None`` when the loader picks the class from it, as ``AutoModel`` does) and every tensor
    present with its shape, except those matching ``unused`` (in the checkpoint, not in the tower) or ``absent``
    (in the tower, may be missing from the checkpoint)."""

    model_types: Collection[str] | None = None
    unused: Sequence[str] = ()
    absent: Sequence[str] = ()
    what: str = "model"  # the tower's name in messages, e.g. "CLIP vision tower"


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes", "on"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def load_pretrained(loader: Any, name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """Call ``loader.from_pretrained(name_or_path, **kwargs)`` and turn a miss into a clear error.

    ``loader`` is any class with ``from_pretrained`` (a transformers model, config or tokenizer class).
    A local folder is used as is. A hub id is looked up in the local cache only when the hub is offline,
    so a missing model fails at once instead of waiting on the network.
    """
    target = str(name_or_path)
    path = Path(target).expanduser()
    local = path.exists()
    if local:
        target = str(path)
        from pneumollm.models.weights.meta_checkpoint import conversion_hint, is_meta_folder

        if is_meta_folder(path) and not (path / "config.json").exists():
            raise WeightsNotFoundError(conversion_hint(path))
    elif target.startswith((".", "/", "~")):
        raise WeightsNotFoundError(f"weights folder {target!r} does not exist")
    offline = hub_offline()
    if offline and not local:
        kwargs.setdefault("local_files_only", True)
    try:
        return loader.from_pretrained(target, **kwargs)
    except UserError:
        raise
    except (OSError, ValueError) as err:
        where = "the local folder" if local else "the Hugging Face hub cache" if offline else "the Hugging Face hub"
        hint = (
            f"Could not load {getattr(loader, '__name__', loader)} weights {target!r} from {where}: {err}\n"
            "Download the weights on a machine with internet access (for example "
            f"`hf download {target} --local-dir /path/to/{Path(target).name}`) and pass the "
            "local folder instead of the hub id"
        )
        if offline and not local:
            hint += ", or unset HF_HUB_OFFLINE to let transformers download them"
        raise WeightsNotFoundError(hint + ".") from err


def load_checked(loader: Any, name_or_path: str | os.PathLike[str], rules: CheckpointRules, **kwargs: Any) -> Any:
    """``load_pretrained`` of a model that must be exactly what ``rules`` describe, or a ``WeightsMismatchError``.

    transformers builds a model from any folder whose config it can read and leaves what the checkpoint lacks
    at random with only a warning (a DINOv2 folder given to CLIP loads none of its tensors); here the
    ``model_type`` is checked before the weights are read, and the missing, unexpected and mismatched tensors
    after. transformers' own per-tensor report is silenced: this one line replaces it.
    """
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    if rules.model_types is not None:
        config = load_pretrained(AutoConfig, name_or_path)
        if config.model_type not in rules.model_types:
            raise WeightsMismatchError(
                f"{name_or_path}: holds a {config.model_type!r} model, not a {rules.what} "
                f"(model_type {' or '.join(sorted(map(repr, rules.model_types)))}); loading it would leave the "
                f"{rules.what} at random weights. Point the setting at {rules.what} weights")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = load_pretrained(loader, name_or_path, output_loading_info=True, ignore_mismatched_sizes=True,
                                      **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    check_loading_info(name_or_path, info, rules)
    return model


def check_loading_info(name_or_path: str | os.PathLike[str], info: dict[str, Any], rules: CheckpointRules) -> None:
    """Refuse a load whose ``output_loading_info`` lists tensors outside ``rules``' known exceptions."""
    missing = _outside(info.get("missing_keys", ()), rules.absent)
    unexpected = _outside(info.get("unexpected_keys", ()), rules.unused)
    mismatched = [f"{name} (checkpoint {list(a)}, model {list(b)})" for name, a, b in info.get("mismatched_keys", ())]
    problems = [*(f"missing {n}" for n in missing), *(f"unexpected {n}" for n in unexpected),
                *(f"other shape {m}" for m in mismatched), *info.get("error_msgs", ())]
    if problems:
        raise WeightsMismatchError(
            f"{name_or_path}: the checkpoint does not match the {rules.what} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} of another shape: {_first(problems)}); loading it "
            "would run on random weights. Check that the folder holds the weights the setting names, complete")


def _outside(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    return sorted(n for n in names if not any(re.search(p, n) for p in patterns))


def _first(problems: Sequence[str], shown: int = 5) -> str:
    more = len(problems) - shown
    return ", ".join(problems[:shown]) + (f" and {more} more" if more > 0 else "")


# open_clip's layout of a CLIP model whose image tower is a timm model (e.g. BiomedCLIP's
# ``open_clip_pytorch_model.bin``): the tower under ``visual.trunk.``, and the tensors a frozen timm encoder leaves
# out on purpose: the text tower, the image projection head and the logit temperature / bias.
OPEN_CLIP_TRUNK = "visual.trunk."
OPEN_CLIP_NOT_TRUNK = (r"^text\.", r"^visual\.head\.", r"^logit_(scale|bias)$")


def open_clip_trunk(state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """An open_clip checkpoint's timm image tower with the ``visual.trunk.`` prefix removed, and the names of its
    other tensors that are not known exceptions (``OPEN_CLIP_NOT_TRUNK``); any other checkpoint as it is."""
    if not any(k.startswith(OPEN_CLIP_TRUNK) for k in state):
        return state, []
    trunk = {k[len(OPEN_CLIP_TRUNK):]: v for k, v in state.items() if k.startswith(OPEN_CLIP_TRUNK)}
    others = _outside((k for k in state if not k.startswith(OPEN_CLIP_TRUNK)), OPEN_CLIP_NOT_TRUNK)
    return trunk, others


class TimmWeights:
    """Gives a timm model the ``from_pretrained`` interface of ``load_pretrained``, loading every tensor or none.

    timm's own ``pretrained=True`` loads non-strictly whenever the classifier is replaced (always here:
    ``num_classes=0``) and only logs what it left at random; this builds the model, reads the checkpoint with
    timm's safe reader and the model's own ``checkpoint_filter_fn`` (format conversions, position-table
    resizing), leaves out only the checkpoint's classifier, and refuses anything else that does not match.
    An open_clip checkpoint (``open_clip_pytorch_model.bin``, tower under ``visual.trunk.``) loads its image tower;
    its text tower and projection head are the only tensors left out (``OPEN_CLIP_NOT_TRUNK``).
    """

    __name__ = "timm"
    WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                    "open_clip_pytorch_model.bin")

    def __init__(self, model_name: str, **create_kwargs: Any) -> None:
        self.model_name = model_name
        self.create_kwargs = create_kwargs

    def checkpoint_file(self, target: str, local_files_only: bool) -> Path:
        path = Path(target)
        if path.is_file():
            return path
        if path.is_dir():
            files = [path / n for n in self.WEIGHT_FILES if (path / n).is_file()]
            if not files:
                raise OSError(f"folder {target!r} holds neither {' nor '.join(self.WEIGHT_FILES)}")
            return files[0]
        from huggingface_hub import hf_hub_download

        misses = []
        for name in self.WEIGHT_FILES:
            try:
                return Path(hf_hub_download(target, name, local_files_only=local_files_only))
            except Exception as err:  # not in the cache, not on the hub, no network: try the next file name
                misses.append(f"{name}: {type(err).__name__}")
        raise OSError(f"no timm weights for {target!r} ({'; '.join(misses)})")

    def from_pretrained(self, target: str, local_files_only: bool = False) -> torch.nn.Module:
        # local_files_only: set by load_pretrained when the hub is offline
        file = self.checkpoint_file(target, local_files_only)
        import timm

        model = timm.create_model(self.model_name, pretrained=False, **self.create_kwargs)
        state, not_trunk = open_clip_trunk(timm.models.load_state_dict(str(file)))
        filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state = filter_fn(state, model)
        own = model.state_dict()
        classifier = model.pretrained_cfg.get("classifier") or ()
        classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        for key in [k for k in state if k.split(".")[0] in classifier]:
            if key not in own or own[key].shape != state[key].shape:  # the checkpoint's classes, not ours
                state.pop(key)
        mismatched = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                      if k in own and v.shape != own[k].shape}
        result = model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
        rules = CheckpointRules(what=f"timm model {self.model_name}",
                                absent=tuple(rf"^{re.escape(c)}\." for c in classifier))
        check_loading_info(target, {"missing_keys": [k for k in result.missing_keys if k not in mismatched],
                                    "unexpected_keys": [*result.unexpected_keys, *not_trunk],
                                    "mismatched_keys": [(k, *shapes) for k, shapes in mismatched.items()]}, rules)
        return model


def timm_hub_id(model_name: str) -> str:
    """The hub id timm downloads ``model_name``'s pretrained weights from (its default tag when it has none)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    return (cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None) or f"timm/{model_name}"


@dataclass
class FrozenBackbone:
    """A frozen backbone from ``load_or_build`` and how many parameters of its checkpoint it left out."""

    model: Any
    dropped_parameters: int = 0


def load_or_build(
    model_class: Any,
    config_class: Any,
    architectures: dict[str, dict[str, Any]],
    *,
    pretrained: bool,
    name_or_path: str | os.PathLike[str] | None,
    architecture: str,
    config_overrides: dict[str, Any] | None,
    frozen_dtype: Any,
    attn_implementation: str,
    init_seed: int | None,
    loader: Any = None,
    drop: Sequence[str] = (),
    quantization: QuantSpec | None = None,
    rules: CheckpointRules | None = None,
    load_kwargs: dict[str, Any] | None = None,
) -> FrozenBackbone:
    """A frozen backbone: pretrained weights from ``name_or_path`` (through ``load_pretrained``), or
    ``architecture`` built at random, in ``frozen_dtype`` (see ``resolve_dtype``) with gradients off.

    ``pretrained: false`` builds ``config_class(**architectures[architecture], **config_overrides)`` on the
    ``meta`` device, removes the submodules named in ``drop`` (e.g. ``embed_tokens``), then materialises the rest
    directly in ``frozen_dtype`` on the current default device (``with torch.device(...)``; ``meta`` stays
    unmaterialised) under ``init_seed`` (see ``materialize``): no full-precision copy, no dropped weights.
    ``pretrained: true`` loads in ``frozen_dtype`` (transformers 5 reads each tensor from the checkpoint straight
    into a buffer of that dtype) and drops ``drop`` right after loading.
    ``quantization`` (nf4/int8) converts the model's linear layers (except an LM head) with bitsandbytes: while
    loading (``BitsAndBytesConfig``) or, for random builds, block by block right after initialisation.
    ``loader`` is the class used for ``from_pretrained`` when it differs from ``model_class`` (e.g. AutoModel).
    ``rules``: what the checkpoint must hold (``load_checked``); by default exactly ``model_class``'s tensors.
    ``load_kwargs``: config values forced on a pretrained load (``from_pretrained`` keyword arguments, e.g. no
    pooling head); random builds take them through ``config_overrides``.
    """
    from pneumollm.models.components.frozen import freeze, resolve_dtype
    from pneumollm.models.components.materialize import build_on_meta, drop_submodules, materialize
    from pneumollm.models.components.quantization import quantize_linears, require_bitsandbytes

    dtype = resolve_dtype(frozen_dtype)
    device = torch.get_default_device()
    quant_device = _quantization_device(device)
    if quantization is not None and device.type != "meta":
        require_bitsandbytes(quantization, quant_device)
    if pretrained:
        if config_overrides:
            raise ValueError("config_overrides only apply to pretrained: false builds")
        if name_or_path is None:
            raise ValueError("pretrained: true needs name_or_path (a hub id or a local folder)")
        extra = {} if quantization is None else {"quantization_config": quantization.bitsandbytes_config(dtype),
                                                 "device_map": {"": quant_device}}
        rules = rules or CheckpointRules(model_types={model_class.config_class.model_type}, what=model_class.__name__)
        model = load_checked(loader or model_class, name_or_path, rules, dtype=dtype,
                             attn_implementation=attn_implementation, **extra, **dict(load_kwargs or {}))
        dropped = drop_submodules(model, drop)
        return FrozenBackbone(freeze(model), dropped)
    if architecture not in architectures:
        raise ValueError(f"unknown {config_class.__name__} architecture {architecture!r}; "
                         f"choose one of {sorted(architectures)}")
    config = config_class(**{**architectures[architecture], **dict(config_overrides or {})})
    model = build_on_meta(model_class, config, dtype, attn_implementation)
    dropped = drop_submodules(model, drop)
    if device.type != "meta":
        on_block = None
        if quantization is not None:
            def on_block(_: str, block: torch.nn.Module) -> None:
                quantize_linears(block, quantization, dtype, quant_device)
        materialize(model, init_seed, device, on_block)
    return FrozenBackbone(freeze(model), dropped)


def _quantization_device(device: torch.device) -> torch.device:
    """Where quantised weights live: the build device, or the GPU when building on the CPU of a GPU machine.

    bitsandbytes quantises on the device that runs the layer (as transformers' quantiser does by default); the
    rest of the model follows when the trainer moves it.
    """
    if device.type == "cpu" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device
