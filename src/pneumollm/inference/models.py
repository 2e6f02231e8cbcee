"""Trained models back from disk: one fold's run folder, an arm's five folds (an ensemble), or an export.

A run folder holds the resolved config (``config.yaml``), the preprocessing plan (``preprocessing.json``), the
tested checkpoint (trainable weights only) and ``metrics.json`` (which checkpoint, which threshold); an export
holds the same per fold (``export.json``, ``pneumollm-export``). The net is rebuilt from the config (frozen
weights from their hub id or folder, or their seeded random initialisation), the trainable weights are loaded on
top, and the frozen weights are checked against the per-tensor fingerprints recorded at training time, so a model
is never assembled from other base weights than it was trained with. Films are prepared with the recorded plan.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pneumollm.data.film_profile import PROFILE_FILE, PROFILE_FORMAT, merge_profiles, read_profile
from pneumollm.data.preprocess import PreprocessSettings
from pneumollm.data.preprocess_plan import preprocess_settings_from_config, settings_from_record
from pneumollm.data.targets import BINARY, LabelTask
from pneumollm.errors import UserError
from pneumollm.training.recalibration import Recalibration
from pneumollm.training.run_folder import CONFIG_FILE, METRICS_FILE, RunFolder

EXPORT_FILE = "export.json"
EXPORT_FORMAT = 1


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
    recalibration: Recalibration | None = None  # fitted on the fold's validation patients (calibration=...)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """P(pneumoconiosis) [B] of films [B, 1, H, W] in [0, 1] (on the net's device; recalibrated where the fold
        was)."""
        return self.scores(images)[0]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(pneumoconiosis) [B], each output's probability [B, C]: the stages' or the findings') of films."""
        return self.scores(images)[:2]

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(P(class 1) [B], each output's probability [B, C], the log-odds of P(class 1) [B] from the logits) of
        films, as the fold runner computes them for predictions.csv: P(class 1) and its log-odds recalibrated (in
        float64) where the fold was, the outputs as the model gives them."""
        from pneumollm.training.losses import positive_log_odds

        logits = self.net(images).float()
        prob, log_odds = self.loss.positive_probability(logits).float(), positive_log_odds(self.loss, logits)
        if self.recalibration is not None:
            recalibrated = self.recalibration.apply(log_odds.double().cpu().numpy())
            prob, log_odds = (torch.from_numpy(v).to(log_odds.device) for v in recalibrated)
        return prob, self.loss.output_probabilities(logits).float(), log_odds


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
        return LabelTask.from_config(str(data.get("task", BINARY)), data.get("classes"), data.get("label_columns"),
                                     class_names=data.get("class_names"))


def check_frozen(net: torch.nn.Module, recorded: Mapping[str, Any], where: Path) -> None:
    """Refuse a net whose frozen weights differ from the ones ``recorded`` holds (``frozen_fingerprints``, per
    tensor; or ``frozen_fingerprint`` in checkpoints written before those), naming the first tensor."""
    from pneumollm.training.module import frozen_mismatch

    why = frozen_mismatch(net, dict(recorded))
    if why is not None:
        raise ModelLoadError(f"{where}: {why}; load the base weights it was trained with (encoder.name_or_path / "
                             "llm.name_or_path)")


def training_preprocessing(plan: PreprocessSettings | None, recorded: DictConfig, config: DictConfig
                           ) -> PreprocessSettings:
    """The preprocessing a model was trained with: its recorded plan (a run's ``preprocessing.json``, an
    export's ``preprocessing``); rebuilt from ``config`` where there is none (runs made before plans) or where
    overrides changed ``recorded``'s data settings (``data.lungs.weights=...`` where the U-Net lives elsewhere)."""
    if plan is not None and recorded.get("data") == config.get("data"):
        return plan
    return preprocess_settings_from_config(config.data)


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
              ) -> tuple[FoldModel, DictConfig, PreprocessSettings]:
    folder = RunFolder(run_dir)
    metrics, recorded = folder.metrics(), folder.config()
    if metrics is None or recorded is None:
        raise ModelLoadError(f"{run_dir}: not a finished run (needs config.yaml and metrics.json)")
    config = OmegaConf.merge(recorded, OmegaConf.from_dotlist(list(overrides))) if overrides else recorded
    checkpoint = metrics.checkpoint
    if checkpoint:
        path = run_dir / checkpoint if not Path(checkpoint).is_absolute() else Path(checkpoint)
        if not path.is_file():
            raise ModelLoadError(f"{path}: the run's tested checkpoint is missing")
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:  # a model without trainable parameters (zero-shot CLIP) has no checkpoint
        state = {}
    net, loss = build_net(config, state.get("state_dict", {}), run_dir, device)
    check_frozen(net, state, run_dir)
    notes = fold_for_inference(net) if fold_adapters else []
    threshold = float(metrics.threshold if metrics.threshold is not None else config.get("threshold", 0.5))
    fold = int(metrics.fold if metrics.fold is not None else config.data.fold)
    settings = training_preprocessing(folder.preprocessing(), recorded, config)
    recalibration = Recalibration.from_record(metrics.calibration)
    return FoldModel(fold, net, loss, threshold, notes, recalibration), config, settings


def load_trained(path: str | Path, device: torch.device | str = "cpu", overrides: Sequence[str] = (),
                 fold_adapters: bool = True) -> TrainedModel:
    """The model of a fold's run folder, an arm folder (``fold*/``: an ensemble) or an export folder.

    ``overrides``: dotlist settings applied to every fold's config (e.g. ``encoder.name_or_path=/models/clip``
    where the base weights live elsewhere than on the training machine).
    """
    path, device = Path(path), torch.device(device)
    if (path / EXPORT_FILE).is_file():
        return load_export(path, device, overrides, fold_adapters)
    if (path / CONFIG_FILE).is_file():
        fold, config, settings = _load_run(path, device, overrides, fold_adapters)
        return TrainedModel(path, str(config.experiment.arm), [fold], config, settings,
                            read_profile(path / PROFILE_FILE))
    run_dirs = sorted(d for d in path.glob("fold*") if (d / METRICS_FILE).is_file())
    if not run_dirs:
        raise ModelLoadError(f"{path}: neither a run folder (config.yaml, metrics.json), an arm folder (fold*/ with "
                             "finished runs) nor an export (export.json)")
    loaded = [_load_run(d, device, overrides, fold_adapters) for d in run_dirs]
    if len({s.fingerprint() for _, _, s in loaded}) > 1:
        raise ModelLoadError(f"{path}: the folds were trained with different preprocessing; predict fold by fold")
    _, config, settings = loaded[0]
    return TrainedModel(path, str(config.experiment.arm), [f for f, _, _ in loaded], config, settings,
                        merge_profiles([read_profile(d / PROFILE_FILE) for d in run_dirs]))


def load_export(path: Path, device: torch.device, overrides: Sequence[str] = (),
                fold_adapters: bool = True) -> TrainedModel:
    """The ensemble of an export folder (base weights from their source, checked against the fingerprints)."""
    from safetensors.torch import load_file

    record = json.loads((path / EXPORT_FILE).read_text())
    if record.get("format") != EXPORT_FORMAT:
        raise ModelLoadError(f"{path}: export format {record.get('format')} (this suite reads {EXPORT_FORMAT})")
    folds, recorded, config = [], None, None
    for entry in record["folds"]:
        recorded = OmegaConf.load(path / entry["config"])
        config = OmegaConf.merge(recorded, OmegaConf.from_dotlist(list(overrides))) if overrides else recorded
        net, loss = build_net(config, load_file(str(path / entry["weights"])), path, device)
        if entry.get("frozen_fingerprints"):
            check_frozen(net, {"frozen_fingerprints": entry["frozen_fingerprints"]}, path)
        notes = fold_for_inference(net) if fold_adapters else []
        if entry.get("frozen_fingerprints") is None and record.get("imported"):
            notes.insert(0, "base weights not checked: the imported weights carry no fingerprints of them "
                            "(pneumollm-import-reference --fingerprint records them)")
        folds.append(FoldModel(int(entry["fold"]), net, loss, float(entry["threshold"]), notes,
                               Recalibration.from_record(entry.get("calibration"))))
    plan = settings_from_record(record["preprocessing"], path / EXPORT_FILE) if record.get("preprocessing") else None
    profile = record.get("training_films")
    return TrainedModel(path, str(record["arm"]), folds, config, training_preprocessing(plan, recorded, config),
                        profile if isinstance(profile, dict) and profile.get("format") == PROFILE_FORMAT else None)
