"""Loading pretrained Hugging Face weights by hub id or local folder, with errors a user can act on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class WeightsNotFoundError(FileNotFoundError):
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
) -> Any:
    """A frozen backbone: pretrained weights from ``name_or_path`` (through ``load_pretrained``), or
    ``architecture`` built at random, in ``frozen_dtype`` (see ``resolve_dtype``) with gradients off.

    ``pretrained: false`` builds ``config_class(**architectures[architecture], **config_overrides)`` with
    ``model_class._from_config`` under a fixed ``init_seed``, so random stand-ins are the same in every run.
    ``loader`` is the class used for ``from_pretrained`` when it differs from ``model_class`` (e.g. AutoModel).
    """
    from pneumollm.models.components.frozen import freeze, resolve_dtype, seeded

    dtype = resolve_dtype(frozen_dtype)
    if pretrained:
        if config_overrides:
            raise ValueError("config_overrides only apply to pretrained: false builds")
        if name_or_path is None:
            raise ValueError("pretrained: true needs name_or_path (a hub id or a local folder)")
        return freeze(load_pretrained(loader or model_class, name_or_path, dtype=dtype,
                                      attn_implementation=attn_implementation))
    if architecture not in architectures:
        raise ValueError(f"unknown {config_class.__name__} architecture {architecture!r}; "
                         f"choose one of {sorted(architectures)}")
    config = config_class(**{**architectures[architecture], **dict(config_overrides or {})})
    with seeded(init_seed):
        return freeze(model_class._from_config(config, dtype=dtype, attn_implementation=attn_implementation))
