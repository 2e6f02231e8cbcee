"""Loading pretrained Hugging Face weights by hub id or local folder, with errors a user can act on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pneumollm.errors import UserError

if TYPE_CHECKING:
    from pneumollm.models.components.quantization import QuantSpec


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Raised when pretrained weights are neither a local folder nor reachable on the hub."""


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
    except (OSError, ValueError) as err:
        where = "the local folder" if local else "the Hugging Face hub cache" if offline else "the Hugging Face hub"
        hint = (
            f"Could not load {getattr(loader, '__name__', loader)} weights {target!r} from {where}: {err}\n"
            "Download the weights on a machine with internet access (for example "
            f"`huggingface-cli download {target} --local-dir /path/to/{Path(target).name}`) and pass the "
            "local folder instead of the hub id"
        )
        if offline and not local:
            hint += ", or unset HF_HUB_OFFLINE to let transformers download them"
        raise WeightsNotFoundError(hint + ".") from err


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
        model = load_pretrained(loader or model_class, name_or_path, dtype=dtype,
                                attn_implementation=attn_implementation, **extra)
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
