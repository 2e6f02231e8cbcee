"""What each fold's run directory holds, written atomically, and what state a run directory is in.

A run directory holds ``job.json`` (the config hash of the run that owns the folder, written when it starts),
``config.yaml``, and once finished ``metrics.json``, ``predictions.csv`` and ``features.npz``; a run that
failed leaves ``failed.json``. ``run_status`` reads them together, so a result is only ever taken as current
when it was written by the config that owns the folder now.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pneumollm.data.film_profile import PROFILE_FILE
from pneumollm.data.targets import BINARY, MULTICLASS, LabelTask
from pneumollm.utils.io import atomic_write, atomic_write_json, atomic_write_text, sha256_json

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CONFIG_FILE = "config.yaml"
FAILED_FILE = "failed.json"
JOB_FILE = "job.json"  # the config hash (and cohort) of the run that owns the folder, written when it starts
FEATURES_FILE = "features.npz"  # head-input features of the test films (for t-SNE plots)
CHECKPOINT_DIR = "checkpoints"
SUPERSEDED_DIR = ".superseded"  # outputs of an earlier config of the same job, set aside rather than deleted
# prob: P(class 1) written exactly (``number_text``); logit: its log-odds from the model's logits (exact where prob
# rounds to 0 or 1; absent in runs made before it existed); pred: prob > the run's threshold.
PREDICTION_COLUMNS = ("image_id", "patient_id", "fold", "label", "prob", "logit", "pred")
# Files a run produces that belong to one config; set aside together when another config takes the folder.
RESULT_FILES = (METRICS_FILE, PREDICTIONS_FILE, FEATURES_FILE, FAILED_FILE, CONFIG_FILE, JOB_FILE, CHECKPOINT_DIR,
                PROFILE_FILE)

# Settings that do not change what a run computes (where it writes, how it reports progress, how tables show it).
NON_SEMANTIC_KEYS = ("paths", "logger", "hydra", "callbacks.progress", "callbacks.step_timer",
                     "data.num_workers", "data.progress", "data.preprocess_workers", "experiment.label",
                     "experiment.group", "experiment.reference", "experiment.curve", "experiment.curve_label",
                     "experiment.folder", "force", "save_features", "feature_cache", "log_every_step",
                     "trainer.cpu_threads", "data.class_names")
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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``metrics.json``, or None when absent or unreadable."""
    return _read_json(Path(run_dir) / METRICS_FILE)


def read_job(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``job.json`` (config hash and cohort of the run that owns the folder), or None."""
    return _read_json(Path(run_dir) / JOB_FILE)


def read_failure(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``failed.json``, or None."""
    return _read_json(Path(run_dir) / FAILED_FILE)


def write_metrics(run_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    return atomic_write_json(Path(run_dir) / METRICS_FILE, dict(metrics))


def write_job(run_dir: str | Path, info: Mapping[str, Any]) -> Path:
    return atomic_write_json(Path(run_dir) / JOB_FILE, dict(info))


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


def write_predictions(run_dir: str | Path, rows: Iterable[Mapping[str, Any]],
                      task: LabelTask | None = None) -> Path:
    """Write ``predictions.csv`` with one row per test film: ``PREDICTION_COLUMNS``, the task's columns
    (``task_column_names``), then any other keys of the rows (the cohort's own columns, e.g. ``site``), sorted."""
    rows = list(rows)
    leading = [*PREDICTION_COLUMNS, *task_column_names(task or LabelTask())]
    extra = [*leading[len(PREDICTION_COLUMNS):], *sorted({k for row in rows for k in row} - set(leading))]

    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            out = csv.DictWriter(handle, fieldnames=[*PREDICTION_COLUMNS, *extra], restval="")
            out.writeheader()
            out.writerows(rows)

    return atomic_write(Path(run_dir) / PREDICTIONS_FILE, writer)


def write_config(run_dir: str | Path, cfg: DictConfig) -> Path:
    return atomic_write_text(Path(run_dir) / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))


def write_features(run_dir: str | Path, features: np.ndarray, labels: np.ndarray, image_ids: list[str]) -> Path:
    """Save the test films' head-input features with their labels and ids."""

    def writer(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez_compressed(handle, features=features.astype(np.float32), labels=labels,
                                image_ids=np.array(image_ids))

    return atomic_write(Path(run_dir) / FEATURES_FILE, writer)


def write_failure(run_dir: str | Path, info: Mapping[str, Any]) -> Path:
    return atomic_write_json(Path(run_dir) / FAILED_FILE, dict(info))


COMPLETE, STALE, FAILED, INCOMPLETE, EMPTY = "complete", "stale", "failed", "incomplete", "empty"


@dataclass(frozen=True)
class RunStatus:
    """What a run directory holds: ``complete`` (current results), ``stale`` (results of another config),
    ``failed`` (the newest attempt failed), ``incomplete`` (started, not finished) or ``empty``."""

    state: str
    reason: str
    config_hash: str | None  # the hash of the config that owns the folder (job.json), if any
    metrics: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("-inf")


def run_status(run_dir: str | Path) -> RunStatus:
    """Classify a run directory; results count only when ``metrics.json`` carries the folder's config hash
    (``job.json``) and no newer failure follows it."""
    run_dir = Path(run_dir)
    job, metrics, failure = read_job(run_dir), read_metrics(run_dir), read_failure(run_dir)
    owner = str(job["config_hash"]) if job and job.get("config_hash") else None
    if metrics is not None:
        if owner is None:
            return RunStatus(STALE, "metrics.json without job.json (written by an earlier version of the suite)",
                             owner, metrics, failure)
        if metrics.get("config_hash") != owner:
            return RunStatus(STALE, f"metrics.json is from config {metrics.get('config_hash')}, but the folder now "
                                    f"belongs to config {owner} (that run was interrupted, failed or is running)",
                             owner, metrics, failure)
        if failure is not None and _mtime(run_dir / FAILED_FILE) >= _mtime(run_dir / METRICS_FILE):
            return RunStatus(FAILED, f"failed after its results were written: {failure.get('error', '?')}",
                             owner, metrics, failure)
        return RunStatus(COMPLETE, "", owner, metrics, failure)
    if failure is not None and (owner is None or failure.get("config_hash") == owner):
        return RunStatus(FAILED, str(failure.get("error", "unknown error")), owner, None, failure)
    if job is not None:
        return RunStatus(INCOMPLETE, "started but not finished (interrupted or still running)", owner)
    return RunStatus(EMPTY, "no run here", None)


def set_aside(run_dir: str | Path, label: str, names: Iterable[str] = RESULT_FILES) -> Path | None:
    """Move ``names`` out of ``run_dir`` into ``.superseded/<label>-<time>/`` (nothing is deleted).

    Returns the folder they went to, or None when there was nothing to move.
    """
    run_dir = Path(run_dir)
    present = [run_dir / n for n in names if (run_dir / n).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = run_dir / SUPERSEDED_DIR / f"{label}-{stamp}-{os.getpid()}"
    target.mkdir(parents=True, exist_ok=True)
    for path in present:
        shutil.move(str(path), str(target / path.name))
    return target
