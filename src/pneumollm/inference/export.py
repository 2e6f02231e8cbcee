"""``pneumollm-export``: an arm's fold models as a small folder to share, and loading it back.

The folder holds only what training produced (the trainable weights of every fold as safetensors: 2.7 M
parameters, about 11 MB, for the paper's PneumoLLM), each fold's resolved config, the preprocessing settings,
the base weights' ids or folders with per-tensor fingerprints, the folds' metrics with the pooled AUC's interval,
and a model card. The frozen base weights come from their source again when the export is loaded, and are refused
when they differ from the recorded ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

import pneumollm
from pneumollm.data.targets import BINARY_CLASSES, check_class_names
from pneumollm.inference.models import (
    EXPORT_FILE,
    FoldModel,
    ModelLoadError,
    TrainedModel,
    build_net,
    check_frozen,
    fold_for_inference,
    preprocess_settings,
)
from pneumollm.training.records import CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE
from pneumollm.utils.io import atomic_write, atomic_write_json, atomic_write_text
from pneumollm.utils.markdown import markdown_table

EXPORT_FORMAT = 1
METRIC_KEYS = ("test/sensitivity", "test/specificity", "test/accuracy", "test/auc", "test/avg")


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


def export_arm(arm_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the export of the arm folder ``arm_dir`` (``fold*/`` finished runs) into ``out_dir``."""
    from safetensors.torch import save_file

    from pneumollm.analysis.collect import read_predictions
    from pneumollm.analysis.stats import bootstrap_auc_by_patient

    arm_dir, out_dir = Path(arm_dir), Path(out_dir)
    run_dirs = sorted(d for d in arm_dir.glob("fold*") if (d / METRICS_FILE).is_file())
    if not run_dirs:
        raise ModelLoadError(f"{arm_dir}: no finished fold runs (fold*/metrics.json) to export")
    out_dir.mkdir(parents=True, exist_ok=True)
    folds, configs = [], []
    for run_dir in run_dirs:
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
        config = OmegaConf.load(run_dir / CONFIG_FILE)
        fold = int(metrics["fold"])
        checkpoint = metrics.get("checkpoint")
        state = torch.load(run_dir / checkpoint, map_location="cpu", weights_only=True) if checkpoint else {}
        weights = {k: v.contiguous() for k, v in state.get("state_dict", {}).items()}
        weights_file = f"fold{fold}.safetensors"
        atomic_write(out_dir / weights_file, lambda tmp, w=weights: save_file(w, str(tmp)))
        atomic_write_text(out_dir / f"fold{fold}.yaml", OmegaConf.to_yaml(config))
        folds.append({"fold": fold, "weights": weights_file, "config": f"fold{fold}.yaml",
                      "threshold": float(metrics.get("threshold", 0.5)),
                      "threshold_mode": metrics.get("threshold_mode", "fixed"),
                      "selected_epoch": metrics.get("selected_epoch"),
                      "metrics": {k: metrics[k] for k in METRIC_KEYS if k in metrics},
                      "frozen_fingerprints": state.get("frozen_fingerprints"),
                      "trainable_params": metrics.get("trainable_params")})
        configs.append(config)
    predictions = [p for run_dir in run_dirs for p in read_predictions(run_dir / PREDICTIONS_FILE)]
    pooled = bootstrap_auc_by_patient([p.label for p in predictions], [p.prob for p in predictions],
                                      [p.patient_id for p in predictions]) if predictions else None
    summary = {key: {"mean": sum(f["metrics"][key] for f in folds) / len(folds)} for key in METRIC_KEYS
               if all(key in f["metrics"] for f in folds)}
    record = {"format": EXPORT_FORMAT, "suite_version": pneumollm.__version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "arm": str(configs[0].experiment.arm), "label": str(configs[0].experiment.get("label", "")),
              "experiment": str(configs[0].experiment.name), "size": str(configs[0].get("size_name", "?")),
              "cohort": str(configs[0].data.get("cohort", "?")), "folds": folds,
              "class_names": list(check_class_names(configs[0].data.get("class_names"))),
              "base_weights": _base_weights(configs[0]), "preprocessing": asdict(preprocess_settings(configs[0])),
              "summary": summary, "pooled_auc": None if pooled is None else
              {"estimate": pooled.estimate, "ci_low": pooled.low, "ci_high": pooled.high}}
    atomic_write_json(out_dir / EXPORT_FILE, record)
    atomic_write_text(out_dir / "README.md", model_card(record))
    return out_dir


def model_card(record: dict[str, Any]) -> str:
    """The export's README: what it is, what it was trained and validated on, how to load it."""
    folds = record["folds"]
    negative, positive = record.get("class_names") or BINARY_CLASSES
    lines = [f"# {record['label'] or record['arm']} ({record['arm']}): a PneumoLLM suite model", "",
             f"Exported on {record['created']} by pneumollm {record['suite_version']} from the study "
             f"`{record['experiment']}` (size={record['size']}) on the cohort `{record['cohort']}`.", "",
             "## What it is", "",
             f"A classifier of chest films into {positive} (class 1) and {negative} (class 0): for each film it "
             f"gives P({positive}) (`prob`), its log-odds (`logit`) and the call `pred` = P({positive}) above "
             "the threshold.", "",
             f"An ensemble of {len(folds)} fold models (patient-level {len(folds)}-fold cross-validation): each "
             "fold's trainable weights (`fold<k>.safetensors`) on top of frozen base weights that are not included:"]
    for part, base in record["base_weights"].items():
        source = base.get("name_or_path") if base.get("pretrained") else f"random {base.get('architecture')} " \
                 f"(seed {base.get('init_seed')})"
        lines.append(f"- {part}: `{source}`")
    lines += ["", "## How it was validated", "",
              "Each fold model was selected on validation patients carved from its training patients and tested "
              f"once on its held-out fold. Sens.: the share of {positive} films called {positive}; Spec.: the "
              f"share of {negative} films called {negative}.", "",
              markdown_table(["fold", "Sens.", "Spec.", "Acc.", "AUC", "AVG", "threshold"],
                             ([f["fold"], *(f"{f['metrics'].get(k, float('nan')):.2f}" for k in METRIC_KEYS),
                               f"{f['threshold']:.3f} ({f['threshold_mode']})"] for f in folds), align="right")]
    if record.get("pooled_auc"):
        p = record["pooled_auc"]
        lines += ["", f"Pooled out-of-fold AUC {p['estimate']:.2f} [{p['ci_low']:.2f}, {p['ci_high']:.2f}] (95 % "
                      "percentile bootstrap over patients)."]
    if record["size"] == "tiny":
        lines += ["", "**Tiny size**: small randomly initialised stand-ins for the paper's models, a pipeline "
                      "check; its figures are not evidence about the method."]
    lines += ["", "## How to use it", "", "```bash", "pneumollm-predict THIS_FOLDER films/ --out predictions.csv",
              "# base weights elsewhere than on the training machine:",
              "pneumollm-predict THIS_FOLDER films/ --out predictions.csv \\",
              "    --set model.encoder.name_or_path=/models/clip model.llm.name_or_path=/models/llama-7b", "```", "",
              "Films are preprocessed as in training (`export.json`, `preprocessing`); the frozen base weights are "
              "checked against the fingerprints recorded at training time and refused when they differ."]
    return "\n".join(lines) + "\n"


def load_export(path: Path, device: torch.device, overrides: Sequence[str] = (),
                fold_adapters: bool = True) -> TrainedModel:
    """The ensemble of an export folder (base weights from their source, checked against the fingerprints)."""
    from safetensors.torch import load_file

    record = json.loads((path / EXPORT_FILE).read_text())
    if record.get("format") != EXPORT_FORMAT:
        raise ModelLoadError(f"{path}: export format {record.get('format')} (this suite reads {EXPORT_FORMAT})")
    folds, config = [], None
    for entry in record["folds"]:
        config = OmegaConf.load(path / entry["config"])
        if overrides:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist(list(overrides)))
        net, loss = build_net(config, load_file(str(path / entry["weights"])), path, device)
        if entry.get("frozen_fingerprints"):
            check_frozen(net, entry["frozen_fingerprints"], path)
        notes = fold_for_inference(net) if fold_adapters else []
        folds.append(FoldModel(int(entry["fold"]), net, loss, float(entry["threshold"]), notes))
    return TrainedModel(path, str(record["arm"]), folds, config, preprocess_settings(config))
