"""``pneumollm-export``: an arm's fold models as a small folder to share (``inference.models`` loads it back).

The folder holds only what training produced (the trainable weights of every fold as safetensors: 2.7 M
parameters, about 11 MB, for the paper's PneumoLLM), each fold's resolved config, the preprocessing settings,
the base weights' ids or folders with per-tensor fingerprints, each fold's recalibration where it was recalibrated,
the folds' metrics, and a model card (``inference.model_card``) with the facts it reports (``card``: data and
inclusion, the split, the protocol, discrimination and calibration with intervals, external and subgroup results;
``inference.card_facts``). The frozen base weights come from their source again when the export is loaded, and
are refused when they differ from the recorded ones. ``pneumollm-import-reference`` writes the same format from the
authors' published checkpoint (``write_fold``, ``export_record``, ``write_record``; the record's ``imported`` entry says
where the weights came from, and the model card shows it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

import pneumollm
from pneumollm.data.film_profile import PROFILE_FILE, merge_profiles, read_profile
from pneumollm.data.preprocess import PreprocessSettings
from pneumollm.data.preprocess_plan import preprocess_settings_from_config, settings_record
from pneumollm.data.targets import check_class_names
from pneumollm.inference.model_card import METRIC_KEYS, model_card
from pneumollm.inference.models import EXPORT_FILE, EXPORT_FORMAT, ModelLoadError, training_preprocessing
from pneumollm.training.fold_metrics import HEADLINE
from pneumollm.training.run_folder import METRICS_FILE, PREDICTIONS_FILE, RunFolder
from pneumollm.utils.io import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["export_arm", "export_record", "model_card", "write_fold", "write_record"]


def _base_weights(config: Any) -> dict[str, Any]:
    """Where each frozen backbone comes from (hub id or folder, or a seeded random build)."""
    out = {}
    for part in ("encoder", "llm"):
        node = OmegaConf.select(config, f"model.{part}")
        if isinstance(node, dict) or OmegaConf.is_dict(node):
            out[part] = {k: OmegaConf.select(config, f"model.{part}.{k}")
                         for k in ("_target_", "name_or_path", "pretrained", "architecture", "init_seed",
                                   "frozen_dtype", "quantization") if OmegaConf.select(config, f"model.{part}.{k}")
                         is not None}
    return out


def export_arm(arm_dir: str | Path, out_dir: str | Path, n_boot: int = 2000) -> Path:
    """Write the export of the arm folder ``arm_dir`` (``fold*/`` finished runs) into ``out_dir``; ``n_boot``:
    the patient-bootstrap resamples of the model card's intervals."""
    from pneumollm.analysis.collect import read_predictions, run_task
    from pneumollm.inference.card_facts import card_facts

    arm_dir, out_dir = Path(arm_dir), Path(out_dir)
    run_dirs = sorted(d for d in arm_dir.glob("fold*") if (d / METRICS_FILE).is_file())
    if not run_dirs:
        raise ModelLoadError(f"{arm_dir}: no finished fold runs (fold*/metrics.json) to export")
    out_dir.mkdir(parents=True, exist_ok=True)
    folds, configs, fold_metrics = [], [], []
    for run_dir in run_dirs:
        folder = RunFolder(run_dir)
        metrics, config = folder.metrics(), folder.config()
        if metrics is None or config is None:
            raise ModelLoadError(f"{run_dir}: not a finished run (needs config.yaml and a readable metrics.json)")
        fold = int(metrics.fold if metrics.fold is not None else config.data.fold)
        state = torch.load(run_dir / metrics.checkpoint, map_location="cpu", weights_only=True) \
            if metrics.checkpoint else {}
        folds.append({**write_fold(out_dir, fold, state.get("state_dict", {}), config),
                      "threshold": float(metrics.threshold if metrics.threshold is not None else 0.5),
                      "threshold_mode": metrics.threshold_mode or "fixed",
                      "selected_epoch": metrics.selected_epoch,
                      "metrics": {f"test/{k}": metrics.test[k] for k in HEADLINE if k in metrics.test},
                      "frozen_fingerprints": state.get("frozen_fingerprints"),
                      "trainable_params": metrics.trainable_params,
                      **({"calibration": metrics.calibration} if metrics.calibration else {})})
        configs.append(config)
        fold_metrics.append(metrics)
    predictions = [p for run_dir, m in zip(run_dirs, fold_metrics) if (run_dir / PREDICTIONS_FILE).is_file()
                   for p in read_predictions(run_dir / PREDICTIONS_FILE, run_task(m))]
    summary = {key: {"mean": sum(f["metrics"][key] for f in folds) / len(folds)} for key in METRIC_KEYS
               if all(key in f["metrics"] for f in folds)}
    profile = merge_profiles([read_profile(run_dir / PROFILE_FILE) for run_dir in run_dirs])
    settings = training_preprocessing(RunFolder(run_dirs[0]).preprocessing(), configs[0], configs[0])
    card = card_facts(arm_dir, str(configs[0].experiment.arm), fold_metrics, configs[0], predictions, n_boot)
    performance = card["performance"]
    record = {**export_record(configs[0], folds, settings), "summary": summary,
              "pooled_auc": performance["auc"] if performance else None, "training_films": profile, "card": card}
    return write_record(out_dir, record)


def write_fold(out_dir: Path, fold: int, weights: dict[str, torch.Tensor], config: Any) -> dict[str, Any]:
    """Write one fold's trainable weights (``fold<k>.safetensors``, keys ``net.*``) and resolved config
    (``fold<k>.yaml``); returns the start of its ``export.json`` entry."""
    from safetensors.torch import save_file

    weights = {k: v.contiguous() for k, v in weights.items()}
    weights_file = f"fold{fold}.safetensors"
    atomic_write(out_dir / weights_file, lambda tmp: save_file(weights, str(tmp)))
    atomic_write_text(out_dir / f"fold{fold}.yaml", OmegaConf.to_yaml(config))
    return {"fold": fold, "weights": weights_file, "config": f"fold{fold}.yaml"}


def export_record(config: Any, folds: list[dict[str, Any]], settings: PreprocessSettings | None = None
                  ) -> dict[str, Any]:
    """The ``export.json`` fields every export has, from one fold's resolved config and the folds' entries;
    ``settings``: the preprocessing the folds recorded (default: made from ``config``)."""
    settings = settings or preprocess_settings_from_config(config.data)
    return {"format": EXPORT_FORMAT, "suite_version": pneumollm.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "arm": str(config.experiment.arm), "label": str(config.experiment.get("label", "")),
            "experiment": str(config.experiment.name), "size": str(config.get("size_name", "?")),
            "cohort": str(config.data.get("cohort", "?")), "folds": folds,
            "class_names": list(check_class_names(config.data.get("class_names"))),
            "base_weights": _base_weights(config), "preprocessing": settings_record(settings)}


def write_record(out_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``export.json`` and the model card (``README.md``) of an export folder; returns the folder."""
    atomic_write_json(out_dir / EXPORT_FILE, record)
    atomic_write_text(out_dir / "README.md", model_card(record))
    return out_dir
