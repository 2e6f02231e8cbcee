"""What a weights folder declares besides its tensors: the input statistics and open_clip's tower name.

Input statistics (per-channel mean and std) are read, in this order, from the folder (or the hub cache of a hub id):

- ``preprocessor_config.json`` (Hugging Face image processors): ``image_mean`` / ``image_std``
  (``do_normalize: false`` means no normalisation);
- ``open_clip_config.json`` (open_clip): ``preprocess_cfg.mean`` / ``.std``, else open_clip's default, the OpenAI
  CLIP statistics;
- ``config.json`` of a timm hub folder: ``pretrained_cfg.mean`` / ``.std``.

An encoder with ``normalization: model`` uses these when present and its built-in default per model type otherwise.
``open_clip_vision_config`` reads the image tower's settings (timm model name, image size) of an open_clip folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumollm.models.base import NORMALIZATION_STATS
from pneumollm.models.components.pretrained import WeightsMismatchError, hub_offline

Stats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class InputStats:
    """Per-channel ``mean`` and ``std`` of an encoder's input and where they come from (``source``)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    @property
    def pair(self) -> Stats:
        return self.mean, self.std


def folder_file(name_or_path: str | os.PathLike[str], filename: str) -> Path | None:
    """``filename`` of a local folder, or of a hub id (downloaded, or from the cache when offline); None if absent."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path / filename if (path / filename).is_file() else None
    if path.exists() or str(name_or_path).startswith((".", "/", "~")):
        return None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(name_or_path), filename, local_files_only=hub_offline()))
    except Exception:  # not in the repository, not cached, no network: the caller falls back to its default
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise WeightsMismatchError(f"{path}: cannot be read as JSON ({err}); restore the file from the weights' "
                                   "source or delete it to use the built-in statistics") from err
    if not isinstance(data, dict):
        raise WeightsMismatchError(f"{path}: holds a {type(data).__name__}, not a JSON object; restore the file")
    return data


def _pair(path: Path, mean: Any, std: Any, source: str) -> InputStats:
    ok = all(isinstance(v, Sequence) and len(v) in (1, 3) and all(isinstance(x, (int, float)) for x in v)
             for v in (mean, std))
    if not ok or min(std) <= 0:
        raise WeightsMismatchError(f"{path}: mean {mean!r} / std {std!r} are not 1 or 3 numbers with std > 0; "
                                   "fix the file or set the encoder's normalization explicitly")
    widen = (lambda v: tuple(float(x) for x in v) * (3 if len(v) == 1 else 1))
    return InputStats(widen(mean), widen(std), source)


def folder_input_stats(name_or_path: str | os.PathLike[str]) -> InputStats | None:
    """The statistics the weights at ``name_or_path`` declare (see the module docstring), or None."""
    if (path := folder_file(name_or_path, "preprocessor_config.json")) is not None:
        cfg = _read_json(path)
        if cfg.get("do_normalize") is False:
            mean, std = NORMALIZATION_STATS["none"]
            return InputStats(mean, std, f"{path.name} (do_normalize: false)")
        if "image_mean" in cfg and "image_std" in cfg:
            return _pair(path, cfg["image_mean"], cfg["image_std"], path.name)
    if (path := folder_file(name_or_path, "open_clip_config.json")) is not None:
        pre = _read_json(path).get("preprocess_cfg") or {}
        if "mean" in pre and "std" in pre:
            return _pair(path, pre["mean"], pre["std"], path.name)
        mean, std = NORMALIZATION_STATS["clip"]
        return InputStats(mean, std, f"{path.name} (open_clip's default: OpenAI CLIP)")
    if (path := folder_file(name_or_path, "config.json")) is not None:
        pre = _read_json(path).get("pretrained_cfg") or {}
        if isinstance(pre, dict) and "mean" in pre and "std" in pre:
            return _pair(path, pre["mean"], pre["std"], f"{path.name} (timm pretrained_cfg)")
    return None


def resolve_input_stats(normalization: str | Sequence[Sequence[float]], default: str | Stats,
                        name_or_path: str | os.PathLike[str] | None) -> InputStats:
    """The statistics an encoder uses: ``normalization`` when it names them (a key of ``NORMALIZATION_STATS`` or
    a ``[mean, std]`` pair); ``model``: the folder's own (``name_or_path``, None for random builds), else
    ``default`` (the model type's built-in statistics)."""
    if isinstance(normalization, str) and normalization == "model":
        found = folder_input_stats(name_or_path) if name_or_path is not None else None
        if found is not None:
            return found
        normalization, source = default, "built-in default"
    else:
        source = "setting"
    if isinstance(normalization, str):
        if normalization not in NORMALIZATION_STATS:
            raise ValueError(f"unknown normalisation {normalization!r}; choose model or one of "
                             f"{sorted(NORMALIZATION_STATS)}, or give [mean, std]")
        mean, std = NORMALIZATION_STATS[normalization]
        return InputStats(tuple(mean), tuple(std), f"{source} ({normalization})")
    mean, std = normalization
    return InputStats(tuple(float(x) for x in mean), tuple(float(x) for x in std), source)


def open_clip_vision_config(name_or_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``model_cfg.vision_cfg`` of the folder's ``open_clip_config.json`` (e.g. ``timm_model_name``,
    ``image_size``), or None when the folder has no such file."""
    path = folder_file(name_or_path, "open_clip_config.json")
    if path is None:
        return None
    cfg = _read_json(path)
    vision = (cfg.get("model_cfg") or cfg).get("vision_cfg")
    if not isinstance(vision, dict):
        raise WeightsMismatchError(f"{path}: has no model_cfg.vision_cfg; restore the file from the weights' source")
    return vision
