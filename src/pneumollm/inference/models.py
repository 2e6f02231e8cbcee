"""Trained models back from disk: one fold's run folder, an arm's five folds (an ensemble), or an export.

A run folder holds the resolved config (``config.yaml``), the tested checkpoint (trainable weights only) and
``metrics.json`` (which checkpoint, which threshold). The net is rebuilt from the config (frozen weights from
their hub id or folder, or their seeded random initialisation), the trainable weights are loaded on top, and the
frozen weights are checked against the fingerprints recorded at training time, so a model is never assembled
from other base weights than it was trained with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pneumollm.data.film_profile import PROFILE_FILE, merge_profiles, read_profile
from pneumollm.data.preprocess import PreprocessSettings
from pneumollm.data.targets import BINARY, LabelTask
from pneumollm.errors import UserError
from pneumollm.models.components.frozen import frozen_tensor_fingerprints
from pneumollm.training.records import CONFIG_FILE, METRICS_FILE

EXPORT_FILE = "export.json"


class ModelLoadError(UserError):
    """A model folder that cannot be loaded as given (names the folder and the problem)."""


@dataclass
class FoldModel:
    """One fold's trained net, ready for inference, with how to read its output."""

    fold: int
    net: torch.nn.Module
    loss: Any  # the training loss: ``positive_probability(logits)`` turns logits into P(pneumoconiosis)
    threshold: float
    notes: list[str] = field(default_factory=list)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """P(pneumoconiosis) [B] of films [B, 1, H, W] in [0, 1] (on the net's device)."""
        return self.loss.positive_probability(self.net(images).float()).float()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(pneumoconiosis) [B], each output's probability [B, C]: the stages' or the findings') of films."""
        logits = self.net(images).float()
        return self.loss.positive_probability(logits).float(), self.loss.output_probabilities(logits).float()


@dataclass
class TrainedModel:
    """The fold models of a run folder, an arm folder or an export, and the preprocessing they were trained on."""

    source: Path
    arm: str
    folds: list[FoldModel]
    config: DictConfig  # one fold's resolved config
    settings: PreprocessSettings
    profile: dict[str, Any] | None = None  # its training films' profile (``data.film_profile``); None before them

    @property
    def threshold(self) -> float:
        """The ensemble's cut-off: the mean of the folds' (each fold's own when there is one)."""
        return float(sum(f.threshold for f in self.folds) / len(self.folds))

    @property
    def task(self) -> LabelTask:
        """The task the model was trained on (binary for runs made before tasks existed)."""
        data = self.config.data
        return LabelTask.from_config(str(data.get("task", BINARY)), data.get("classes"), data.get("label_columns"))

    @property
    def lungs(self) -> dict[str, Any]:
        """The lung-crop option of the runs (``lungs`` config without the crop margin)."""
        return {k: v for k, v in OmegaConf.to_container(self.config.data.lungs, resolve=True).items() if k != "margin"}


def check_frozen(net: torch.nn.Module, recorded: dict[str, str], where: Path) -> None:
    """Refuse a net whose frozen weights differ from ``recorded`` (shape or values), naming the first tensor."""
    current = frozen_tensor_fingerprints(net)
    for name, expected in recorded.items():
        if name not in current:
            raise ModelLoadError(f"{where}: the base model has no frozen tensor {name!r} that the trained model had; "
                                 "load the base weights it was trained with")
        if current[name] != expected:
            what = "shape" if current[name].split(":")[0] != expected.split(":")[0] else "values"
            raise ModelLoadError(f"{where}: the base weights differ from the ones recorded at training time "
                                 f"({what} of {name}: {current[name]} vs {expected}); load the base weights it was "
                                 "trained with (encoder.name_or_path / llm.name_or_path)")


def preprocess_settings(config: DictConfig) -> PreprocessSettings:
    """The preprocessing the runs were trained with (as ``CohortDataModule`` builds it from ``data``)."""
    data = config.data
    lungs = OmegaConf.to_container(data.lungs, resolve=True)
    return PreprocessSettings(image_size=int(data.image_size), lungs={k: v for k, v in lungs.items() if k != "margin"},
                              margin=float(lungs.get("margin", 0.0)),
                              allowed_modalities=tuple(data.get("allowed_modalities", ("CR", "DX", "DR", "RG", "OT"))),
                              min_size=int(data.get("min_film_size", 64)))


def build_net(config: DictConfig, state: dict[str, torch.Tensor], where: Path,
              device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The net of ``config`` with the trainable weights ``state`` (keys ``net.*``) on ``device``, and its loss."""
    from hydra.utils import instantiate

    from pneumollm.config import register_resolvers
    from pneumollm.models.components.frozen import seeded
    from pneumollm.models.saved_configs import current_net_config

    register_resolvers()
    with seeded(int(config.get("seed", 20))):  # as the training app builds it
        net = instantiate(current_net_config(config.model, str(where)), _convert_="object")
    loss = instantiate(config.loss)
    weights = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    missing = [n for n, p in net.named_parameters() if p.requires_grad and n not in weights]
    if missing:
        raise ModelLoadError(f"{where}: the checkpoint lacks trainable weights {missing[:3]} of the model its config "
                             "describes (another arm or version of the suite?)")
    result = net.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise ModelLoadError(f"{where}: the checkpoint holds weights the model lacks: {result.unexpected_keys[:3]}")
    return net.to(device).eval(), loss


def fold_for_inference(net: torch.nn.Module) -> list[str]:
    """Merge adapters into the frozen weights where the model can (RepAdapters, LoRA); notes what could not."""
    fold = getattr(net, "fold_adapters", None)
    if fold is None:
        return []
    try:
        merged = fold()
    except (RuntimeError, ValueError) as err:  # quantised trunks, routed adapters: they stay unfolded
        return [f"adapters kept unfolded: {err}"]
    return [f"{merged} adapters folded into the frozen weights"] if merged else []


def _load_run(run_dir: Path, device: torch.device, overrides: Sequence[str], fold_adapters: bool
              ) -> tuple[FoldModel, DictConfig]:
    metrics_path, config_path = run_dir / METRICS_FILE, run_dir / CONFIG_FILE
    if not metrics_path.is_file() or not config_path.is_file():
        raise ModelLoadError(f"{run_dir}: not a finished run (needs config.yaml and metrics.json)")
    metrics = json.loads(metrics_path.read_text())
    config = OmegaConf.load(config_path)
    if overrides:
        config = OmegaConf.merge(config, OmegaConf.from_dotlist(list(overrides)))
    checkpoint = metrics.get("checkpoint")
    if checkpoint:
        path = run_dir / checkpoint if not Path(checkpoint).is_absolute() else Path(checkpoint)
        if not path.is_file():
            raise ModelLoadError(f"{path}: the run's tested checkpoint is missing")
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:  # a model without trainable parameters (zero-shot CLIP) has no checkpoint
        state = {}
    net, loss = build_net(config, state.get("state_dict", {}), run_dir, device)
    if state.get("frozen_fingerprints"):
        check_frozen(net, state["frozen_fingerprints"], run_dir)
    elif state.get("frozen_fingerprint"):  # checkpoints written before per-tensor fingerprints
        from pneumollm.training.module import frozen_fingerprint

        if frozen_fingerprint(net) != state["frozen_fingerprint"]:
            raise ModelLoadError(f"{run_dir}: the base weights differ from the ones the run was trained with")
    notes = fold_for_inference(net) if fold_adapters else []
    threshold = float(metrics.get("threshold", config.get("threshold", 0.5)))
    return FoldModel(int(metrics.get("fold", config.data.fold)), net, loss, threshold, notes), config


def load_trained(path: str | Path, device: torch.device | str = "cpu", overrides: Sequence[str] = (),
                 fold_adapters: bool = True) -> TrainedModel:
    """The model of a fold's run folder, an arm folder (``fold*/``: an ensemble) or an export folder.

    ``overrides``: dotlist settings applied to every fold's config (e.g. ``encoder.name_or_path=/models/clip``
    where the base weights live elsewhere than on the training machine).
    """
    from pneumollm.inference.export import load_export

    path, device = Path(path), torch.device(device)
    if (path / EXPORT_FILE).is_file():
        return load_export(path, device, overrides, fold_adapters)
    if (path / CONFIG_FILE).is_file():
        fold, config = _load_run(path, device, overrides, fold_adapters)
        return TrainedModel(path, str(config.experiment.arm), [fold], config, preprocess_settings(config),
                            read_profile(path / PROFILE_FILE))
    run_dirs = sorted(d for d in path.glob("fold*") if (d / METRICS_FILE).is_file())
    if not run_dirs:
        raise ModelLoadError(f"{path}: neither a run folder (config.yaml, metrics.json), an arm folder (fold*/ with "
                             "finished runs) nor an export (export.json)")
    loaded = [_load_run(d, device, overrides, fold_adapters) for d in run_dirs]
    settings = [preprocess_settings(c) for _, c in loaded]
    if len({s.fingerprint() for s in settings}) > 1:
        raise ModelLoadError(f"{path}: the folds were trained with different preprocessing; predict fold by fold")
    config = loaded[0][1]
    return TrainedModel(path, str(config.experiment.arm), [f for f, _ in loaded], config, settings[0],
                        merge_profiles([read_profile(d / PROFILE_FILE) for d in run_dirs]))
