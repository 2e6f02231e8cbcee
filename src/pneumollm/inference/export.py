"""``pneumollm-export``: an arm's fold models as a small folder to share (``inference.models`` loads it back).

The folder holds only what training produced (the trainable weights of every fold as safetensors: 2.7 M
parameters, about 11 MB, for the paper's PneumoLLM), each fold's resolved config, the preprocessing settings,
the base weights' ids or folders with per-tensor fingerprints, the folds' metrics with the pooled AUC's interval,
and a model card. The frozen base weights come from their source again when the export is loaded, and are refused
when they differ from the recorded ones. ``pneumollm-import-reference`` writes the same format from the authors'
published checkpoint (``write_fold``, ``export_record``, ``write_record``; the record's ``imported`` entry says
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
from pneumollm.data.targets import BINARY_CLASSES, check_class_names
from pneumollm.inference.models import EXPORT_FILE, EXPORT_FORMAT, ModelLoadError, training_preprocessing
from pneumollm.training.fold_metrics import HEADLINE
from pneumollm.training.run_folder import METRICS_FILE, PREDICTIONS_FILE, RunFolder
from pneumollm.utils.io import atomic_write, atomic_write_json, atomic_write_text
from pneumollm.utils.markdown import markdown_table

METRIC_KEYS = tuple(f"test/{name}" for name in HEADLINE)  # the folds' figures export.json keeps


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
    from pneumollm.analysis.collect import read_predictions
    from pneumollm.analysis.stats import bootstrap_auc_by_patient

    arm_dir, out_dir = Path(arm_dir), Path(out_dir)
    run_dirs = sorted(d for d in arm_dir.glob("fold*") if (d / METRICS_FILE).is_file())
    if not run_dirs:
        raise ModelLoadError(f"{arm_dir}: no finished fold runs (fold*/metrics.json) to export")
    out_dir.mkdir(parents=True, exist_ok=True)
    folds, configs = [], []
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
                      "trainable_params": metrics.trainable_params})
        configs.append(config)
    predictions = [p for run_dir in run_dirs for p in read_predictions(run_dir / PREDICTIONS_FILE)]
    pooled = bootstrap_auc_by_patient([p.label for p in predictions], [p.prob for p in predictions],
                                      [p.patient_id for p in predictions]) if predictions else None
    summary = {key: {"mean": sum(f["metrics"][key] for f in folds) / len(folds)} for key in METRIC_KEYS
               if all(key in f["metrics"] for f in folds)}
    profile = merge_profiles([read_profile(run_dir / PROFILE_FILE) for run_dir in run_dirs])
    settings = training_preprocessing(RunFolder(run_dirs[0]).preprocessing(), configs[0], configs[0])
    record = {**export_record(configs[0], folds, settings), "summary": summary,
              "pooled_auc": None if pooled is None else {"estimate": pooled.estimate, "ci_low": pooled.low,
                                                         "ci_high": pooled.high},
              "training_films": profile}
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


def model_card(record: dict[str, Any]) -> str:
    """The export's README: what it is, where its weights come from, how it was validated, how to load it."""
    imported = record.get("imported")
    lines = _imported_card_lines(record) if imported else _trained_card_lines(record)
    lines += usage_lines(not imported or imported["base_weights_checked"])
    if record.get("training_films"):
        lines += ["", "The predictions' `shift` column names films that look unlike the training films (their "
                      "profile is `training_films` in `export.json`: native sizes, file formats, input intensities)."]
    return "\n".join(lines) + "\n"


def base_weight_lines(record: dict[str, Any]) -> list[str]:
    """One Markdown bullet per frozen backbone: its hub id or folder, or its seeded random build."""
    lines = []
    for part, base in record["base_weights"].items():
        source = base.get("name_or_path") if base.get("pretrained") else f"random {base.get('architecture')} " \
                 f"(seed {base.get('init_seed')})"
        lines.append(f"- {part}: `{source}`")
    return lines


def _trained_card_lines(record: dict[str, Any]) -> list[str]:
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
             "fold's trainable weights (`fold<k>.safetensors`) on top of frozen base weights that are not included:",
             *base_weight_lines(record)]
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
    return lines


REFERENCE_ARGS_SHOWN = ("multiscale", "RPO_K", "adapter_dim", "hidden_proj", "adapter_type", "visual_adapter_type",
                        "bits", "llm_model")


def _imported_card_lines(record: dict[str, Any]) -> list[str]:
    """The card of weights trained elsewhere (``record['imported']``, written by ``pneumollm-import-reference``)."""
    imported, folds = record["imported"], record["folds"]
    checkpoints = imported["checkpoints"]
    lines = [f"# {record['label'] or record['arm']} ({record['arm']}): the authors' published weights, imported", "",
             f"Imported on {record['created']} by pneumollm {record['suite_version']} from {imported['source']}: "
             f"**{imported['note']}** ({record['size']} size).", "",
             "## What it is", "",
             f"{len(folds)} model(s), one per imported checkpoint (`fold<k>.safetensors`; several are averaged as an "
             "ensemble): the paper's PneumoLLM with the authors' trained adapters, CMTE, neck and head, on top of "
             "frozen base weights that are not included:", *base_weight_lines(record), ""]
    if imported["base_weights_checked"]:
        lines.append("The base weights were fingerprinted at import from the sources above, and later loads are "
                     "refused when they differ. The reference recorded no fingerprints itself: that these are the "
                     "base weights the authors trained on is assumed, not checked.")
    else:
        lines.append("**Base weights unchecked**: the reference's checkpoint records no fingerprints of the base "
                     "weights it was trained on, so loading this folder cannot tell whether the CLIP and LLaMA "
                     "weights it finds are the authors' (OpenAI's CLIP ViT-L/14 and Meta's LLaMA-7B). "
                     "`pneumollm-import-reference --fingerprint` loads them at import and records their fingerprints, "
                     "so that later loads are checked against those.")
    lines += ["", "## Where the weights came from", "",
              markdown_table(["fold", "file", "sha256", "epoch"],
                             ([c["fold"], f"`{c['file']}`", f"`{c['sha256']}`", c.get("epoch", "")]
                              for c in checkpoints)),
              "", "Settings read from each checkpoint's `args` (all of them are in `export.json`):", "",
              markdown_table(["fold", *REFERENCE_ARGS_SHOWN],
                             ([c["fold"], *(c["args"].get(k, "") for k in REFERENCE_ARGS_SHOWN)] for c in checkpoints))]
    defaulted = sorted({k for c in checkpoints for k in c.get("defaulted_args", [])})
    if defaulted:
        lines += ["", f"Missing from the args and taken from the reference's defaults: {', '.join(defaulted)}."]
    lines += ["", "## The reference's quirks, reproduced", "",
              *(f"- `{q['setting']}` = {q['value']}: {q['why']}" for q in imported["quirks"])]
    prep = record["preprocessing"]
    lungs = str(prep["lungs"].get("_target_", "?")).rpartition(".")[2]
    lines += ["", f"Films are cropped to the lungs by `{lungs}` (margin {prep['margin']}) and resized to "
                  f"{prep['image_size']} px. The reference cropped them to the bounding rectangle of HybridGNet lung "
                  "masks (CheXmask's pipeline) before resizing to 224 px, which `lungs=chexmask` (precomputed masks) "
                  "or `lungs=unet` at import come closer to.",
              "", "## How it was validated", "",
              "Not by this suite. The reference kept the epoch with the best average of sensitivity, specificity, "
              "accuracy and AUC on the split it then reported, so the published figures of these weights are "
              "optimistic. Compare them with arms retrained on your cohort (docs/reference_import.md)."]
    if record["size"] == "tiny":
        lines += ["", "**Tiny size**: small randomly initialised stand-ins for the paper's models, a pipeline "
                      "check; its figures are not evidence about the method."]
    return lines


def usage_lines(checked: bool = True) -> list[str]:
    """The model card's "How to use it" section; ``checked``: whether loads check the base weights."""
    check = ("the frozen base weights are checked against the fingerprints recorded at training time and refused "
             "when they differ." if checked else "the frozen base weights are **not** checked: no fingerprints of "
             "them were recorded.")
    return ["", "## How to use it", "", "```bash", "pneumollm-predict THIS_FOLDER films/ --out predictions.csv",
            "# base weights elsewhere than on the training machine:",
            "pneumollm-predict THIS_FOLDER films/ --out predictions.csv \\",
            "    --set model.encoder.name_or_path=/models/clip model.llm.name_or_path=/models/llama-7b", "```", "",
            f"Films are preprocessed as in training (`export.json`, `preprocessing`); {check}"]
