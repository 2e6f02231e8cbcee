"""Net configs that earlier versions of the suite saved in run folders (``config.yaml``), read in today's shape.

A run folder keeps its resolved config; loading a trained model instantiates its ``model`` node. Nodes written
before a layout change are rewritten here, so runs made before it stay readable by ``pneumollm-predict``,
``-export``, ``-external`` and ``-aggregate``; a node that cannot be read is refused with how to re-run.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from pneumollm.errors import ConfigError

# Classes that moved: the saved ``_target_`` -> where it lives now.
MOVED_TARGETS = {
    "pneumollm.models.timm_classifier.TimmClassifier": "pneumollm.models.arms.timm_classifier.TimmClassifier",
}
# One YAML held both sizes of a comparison arm: {_target_: BY_SIZE, size, full, tiny} built ``tiny`` or ``full``.
BY_SIZE = "pneumollm.models.sizing.by_size"
PNEUMOLLM = "pneumollm.models.pneumollm.PneumoLLM"
NECK = "pneumollm.models.components.neck.Neck"


def current_net_config(node: DictConfig, where: str = "config.yaml") -> DictConfig:
    """The saved net config ``node`` (a run's ``model``) in today's shape; ``where`` names the file in errors."""
    plain = OmegaConf.to_container(node, resolve=True)
    if not isinstance(plain, dict) or "_target_" not in plain:
        raise ConfigError(f"{where}: its `model` entry is no net config (no _target_); re-run the fold with "
                          "today's suite (pneumollm-train arm=<arm> data.fold=<k>) to write a current one")
    if plain["_target_"] == BY_SIZE:
        plain = _sized(plain, where)
    if plain["_target_"] == PNEUMOLLM and "neck_dim" in plain:  # the neck's width, before the neck group
        plain["neck"] = {"_target_": NECK, "_partial_": True, "hidden": plain.pop("neck_dim")}
    return OmegaConf.create(_rewrite(plain))


def _sized(node: dict[str, Any], where: str) -> dict[str, Any]:
    """The entry that a ``by_size`` node built: ``tiny`` at the tiny size where it has one, else ``full``."""
    size = node.get("size")
    chosen = node.get("tiny") if size == "tiny" and node.get("tiny") is not None else node.get("full")
    if size not in ("tiny", "full") or not isinstance(chosen, dict):
        raise ConfigError(f"{where}: its `model` entry holds sized variants but no usable one for size {size!r}; "
                          "re-run the fold with today's suite (pneumollm-train arm=<arm> data.fold=<k>)")
    return chosen


def _rewrite(value: Any) -> Any:
    if isinstance(value, dict):
        value = {k: _rewrite(v) for k, v in value.items()}
        if value.get("_target_") in MOVED_TARGETS:
            value["_target_"] = MOVED_TARGETS[value["_target_"]]
        return value
    if isinstance(value, list):
        return [_rewrite(v) for v in value]
    return value
