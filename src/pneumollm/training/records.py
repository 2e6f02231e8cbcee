"""What each fold's run directory holds, written atomically: metrics, predictions, config, failure notes."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pneumollm.utils.io import atomic_write, atomic_write_json, atomic_write_text, sha256_json

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CONFIG_FILE = "config.yaml"
FAILED_FILE = "failed.json"
FEATURES_FILE = "features.npz"  # head-input features of the test films (for t-SNE plots)
PREDICTION_COLUMNS = ("image_id", "patient_id", "fold", "label", "prob")

# Settings that do not change what a run computes (where it writes, how it reports progress, how tables show it).
NON_SEMANTIC_KEYS = ("paths", "logger", "hydra", "callbacks.progress", "data.num_workers", "data.progress",
                     "data.preprocess_workers", "experiment.label", "experiment.group", "experiment.reference",
                     "experiment.curve", "experiment.curve_label", "force", "save_features")


def _drop(container: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head not in container:
        return
    if rest and isinstance(container[head], dict):
        _drop(container[head], rest)
    elif not rest:
        container.pop(head)


def config_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    """Hash of the resolved config without the keys that do not affect results (first 16 hex digits)."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    plain = json.loads(json.dumps(plain, default=str))
    for key in NON_SEMANTIC_KEYS:
        _drop(plain, key)
    return sha256_json(plain)[:16]


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``metrics.json``, or None when absent or unreadable."""
    path = Path(run_dir) / METRICS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_metrics(run_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    return atomic_write_json(Path(run_dir) / METRICS_FILE, dict(metrics))


def write_predictions(run_dir: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``predictions.csv`` with one row per test film."""

    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            out = csv.DictWriter(handle, fieldnames=PREDICTION_COLUMNS)
            out.writeheader()
            for row in rows:
                out.writerow({k: row[k] for k in PREDICTION_COLUMNS})

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
