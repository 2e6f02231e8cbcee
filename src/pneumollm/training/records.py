"""The formats of a run's records: the config hash that names a run, and the rows of ``predictions.csv``.

Where the files live and when they are written is the run folder's business (``training.run_folder``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pneumollm.data.targets import BINARY, MULTICLASS, LabelTask
from pneumollm.utils.io import atomic_write, sha256_json

if TYPE_CHECKING:
    from pneumollm.data.preprocess import PreparedFilm

# prob: P(class 1) written exactly (``number_text``); logit: its log-odds from the model's logits (exact where prob
# rounds to 0 or 1; absent in runs made before it existed); pred: prob > the run's threshold.
PREDICTION_COLUMNS = ("image_id", "patient_id", "fold", "label", "prob", "logit", "pred")
# Recalibrated runs (calibration=temperature|platt): prob and logit are the recalibrated ones, these the model's own.
RAW_COLUMNS = ("prob_raw", "logit_raw")

# Settings that do not change what a run computes (where it writes, how it reports progress, how tables show it).
NON_SEMANTIC_KEYS = ("paths", "logger", "hydra", "callbacks.progress", "callbacks.step_timer",
                     "data.num_workers", "data.progress", "data.preprocess_workers", "experiment.label",
                     "experiment.group", "experiment.reference", "experiment.curve", "experiment.curve_label",
                     "experiment.folder", "force", "save_features", "feature_cache", "log_every_step",
                     "trainer.cpu_threads", "data.class_names")
# Settings added after runs existed: left out of the hash at their default (the results of before), so those runs
# keep their hash and are not rerun; any other value is part of it.
DEFAULTED_KEYS = {"calibration": "none"}
# Where inputs and outputs live. The cohort's content stands in for them (``cohort_identity`` in the hash), so
# a moved cohort or a copied results folder keeps its hash, and a changed film changes it.
LOCATION_KEYS = ("callbacks.checkpoint.dirpath", "callbacks.last_checkpoint.dirpath", "data.prepared_dir",
                 "data.source.manifest", "data.source.folder", "data.source.labels", "data.source.dir",
                 "data.folds_file", "data.cohort", "data.lungs", "lungs")


def _drop(container: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head not in container:
        return
    if rest and isinstance(container[head], dict):
        _drop(container[head], rest)
    elif not rest:
        container.pop(head)


def semantic_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config without the keys that do not affect results or only say where things live."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    plain = json.loads(json.dumps(plain, default=str))
    for key in (*NON_SEMANTIC_KEYS, *LOCATION_KEYS):
        _drop(plain, key)
    for key, default in DEFAULTED_KEYS.items():
        if key in plain and plain[key] in (default, None):
            plain.pop(key)
    return plain


def config_hash(cfg: DictConfig | Mapping[str, Any], cohort: Mapping[str, Any] | None = None) -> str:
    """Hash (16 hex digits) of what a run's result depends on: its semantic config and the cohort's content.

    ``cohort``: the prepared cohort's identity (films, labels, folds and preprocessing, see
    ``CohortDataModule.cohort_identity``); without it the hash covers the config alone.
    """
    plain = semantic_config(cfg)
    if cohort is not None:
        plain = {"config": plain, "cohort": dict(cohort)}
    return sha256_json(plain)[:16]


def number_text(value: float) -> str:
    """A number as the shortest text that reads back as the same float (``repr``: up to 17 significant digits),
    so figures recomputed from a written file equal the ones computed before writing it."""
    return repr(float(value))


def task_column_names(task: LabelTask) -> list[str]:
    """The columns a staged or multi-label run adds to ``predictions.csv`` (none for binary): ``stage``,
    ``pred_stage`` (the most probable stage) and ``prob_stage_<class>`` per stage; or ``true_<finding>``,
    ``prob_<finding>`` and ``pred_<finding>`` (sigmoid above 0.5) per finding."""
    if task.task == BINARY:
        return []
    if task.task == MULTICLASS:
        return ["stage", "pred_stage", *(f"prob_stage_{c}" for c in task.classes)]
    return [f"{kind}_{name}" for name in task.label_columns for kind in ("true", "prob", "pred")]


def predicted_columns(task: LabelTask, outputs: Sequence[float]) -> dict[str, Any]:
    """A film's predicted stage or findings from the model's output probabilities: ``pred_stage`` (the most
    probable stage) and ``prob_stage_<class>``, or ``prob_<finding>`` and ``pred_<finding>`` (above 0.5); none
    for binary. ``pneumollm-predict`` writes these too."""
    if task.task == BINARY:
        return {}
    probs = [float(p) for p in outputs]
    if task.task == MULTICLASS:
        best = max(range(len(probs)), key=probs.__getitem__)
        return {"pred_stage": task.classes[best],
                **{f"prob_stage_{c}": number_text(p) for c, p in zip(task.classes, probs)}}
    values: dict[str, Any] = {}
    for name, p in zip(task.label_columns, probs):
        values |= {f"prob_{name}": number_text(p), f"pred_{name}": int(p > 0.5)}
    return values


def task_columns(task: LabelTask, target: Any, outputs: Sequence[float]) -> dict[str, Any]:
    """A test film's ``task_column_names`` values from its target (class index, or multi-hot row) and the
    model's output probabilities."""
    if task.task == BINARY:
        return {}
    if task.task == MULTICLASS:
        truth: dict[str, Any] = {"stage": task.classes[int(target)]}
    else:
        truth = {f"true_{name}": round(float(t)) for name, t in zip(task.label_columns, target)}
    return {**truth, **predicted_columns(task, outputs)}


def prediction_rows(predictions: Mapping[str, Any], films: Sequence[PreparedFilm], fold: int, threshold: float,
                    task: LabelTask) -> list[dict[str, Any]]:
    """One ``predictions.csv`` row per test film from the module's test predictions (``index``, ``label``,
    ``prob``, ``logit``, ``target``, ``outputs``), every number exactly as the test figures were computed from it;
    ``pred`` is ``prob > threshold``. A recalibrated run's predictions also carry ``prob_raw`` and ``logit_raw``."""
    rows = [{**films[i].extra, "image_id": films[i].image_id, "patient_id": films[i].patient_id, "fold": fold,
             "label": int(label), "prob": number_text(prob), "logit": number_text(logit), "pred": int(prob > threshold),
             **task_columns(task, target, outputs)}
            for i, label, prob, logit, target, outputs in zip(
                predictions["index"].tolist(), predictions["label"].tolist(), predictions["prob"].tolist(),
                predictions["logit"].tolist(), predictions["target"], predictions["outputs"])]
    if all(name in predictions for name in RAW_COLUMNS):
        for row, *raw in zip(rows, *(predictions[name].tolist() for name in RAW_COLUMNS)):
            row.update({name: number_text(value) for name, value in zip(RAW_COLUMNS, raw)})
    return rows


def write_predictions_csv(path: Path, rows: Iterable[Mapping[str, Any]], task: LabelTask | None = None) -> Path:
    """Write ``predictions.csv`` with one row per test film: ``PREDICTION_COLUMNS``, ``RAW_COLUMNS`` where the rows
    have them (recalibrated runs), the task's columns (``task_column_names``), then any other keys of the rows (the
    cohort's own columns, e.g. ``site``), sorted."""
    rows = list(rows)
    raw = [name for name in RAW_COLUMNS if any(name in row for row in rows)]
    leading = [*PREDICTION_COLUMNS, *raw, *task_column_names(task or LabelTask())]
    extra = [*leading[len(PREDICTION_COLUMNS):], *sorted({k for row in rows for k in row} - set(leading))]

    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            out = csv.DictWriter(handle, fieldnames=[*PREDICTION_COLUMNS, *extra], restval="")
            out.writeheader()
            out.writerows(rows)

    return atomic_write(path, writer)


def write_features_npz(path: Path, features: np.ndarray, labels: np.ndarray, image_ids: list[str]) -> Path:
    """Save the test films' head-input features with their labels and ids."""

    def writer(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez_compressed(handle, features=features.astype(np.float32), labels=labels,
                                image_ids=np.array(image_ids))

    return atomic_write(path, writer)
