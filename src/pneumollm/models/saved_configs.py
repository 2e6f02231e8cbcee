"""Net configs that earlier versions of the suite saved in run folders (``config.yaml``), read in today's shape.

A run folder keeps its resolved config; loading a trained model instantiates its ``model`` node. Nodes written
before a layout change are rewritten here, so runs made before it stay readable by ``pneumollm-predict``,
``-export``, ``-external`` and ``-aggregate``; a node that cannot be read is refused with how to re-run.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from pneumollm.errors import ConfigError

# Classes that moved: the saved ``_target_`` -> where it lives now.
MOVED_TARGETS = {
    "pneumollm.models.timm_classifier.TimmClassifier": "pneumollm.models.arms.timm_classifier.TimmClassifier",
}


def current_net_config(node: DictConfig, where: str = "config.yaml") -> DictConfig:
    """The saved net config ``node`` (a run's ``model``) in today's shape; ``where`` names the file in errors."""
    plain = OmegaConf.to_container(node, resolve=True)
    if not isinstance(plain, dict) or "_target_" not in plain:
        raise ConfigError(f"{where}: its `model` entry is no net config (no _target_); re-run the fold with "
                          "today's suite (pneumollm-train arm=<arm> data.fold=<k>) to write a current one")
    return OmegaConf.create(_rewrite(plain))


def _rewrite(value: Any) -> Any:
    if isinstance(value, dict):
        value = {k: _rewrite(v) for k, v in value.items()}
        if value.get("_target_") in MOVED_TARGETS:
            value["_target_"] = MOVED_TARGETS[value["_target_"]]
        return value
    if isinstance(value, list | ListConfig):
        return [_rewrite(v) for v in value]
    return value
