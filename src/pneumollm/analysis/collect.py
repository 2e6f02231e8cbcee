"""Collect the fold runs of an experiment folder into per-arm results, refusing incomplete or overlapping ones."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumollm.training.records import FAILED_FILE, METRICS_FILE, PREDICTIONS_FILE


class AggregationError(ValueError):
    """Runs that cannot be summarised honestly (a missing fold, a film predicted twice, no runs at all)."""


@dataclass
class Prediction:
    image_id: str
    patient_id: str
    fold: int
    label: int
    prob: float


@dataclass
class ArmRuns:
    """All fold runs of one arm."""

    arm: str
    label: str
    folds: dict[int, dict[str, Any]] = field(default_factory=dict)  # fold -> metrics.json
    predictions: list[Prediction] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # fold -> error of a failed run without metrics
    run_dirs: dict[int, Path] = field(default_factory=dict)


def _read_predictions(path: Path) -> list[Prediction]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [Prediction(r["image_id"], r["patient_id"], int(r["fold"]), int(r["label"]), float(r["prob"]))
                for r in csv.DictReader(handle)]


def collect_runs(experiment_dir: str | Path) -> dict[str, ArmRuns]:
    """Read every ``<arm>/fold<k>/metrics.json`` (and failures) under ``experiment_dir``."""
    root = Path(experiment_dir)
    if not root.is_dir():
        raise AggregationError(f"{root}: experiment folder not found")
    arms: dict[str, ArmRuns] = {}
    for marker in sorted([*root.rglob(METRICS_FILE), *root.rglob(FAILED_FILE)]):
        run_dir = marker.parent
        if marker.name == FAILED_FILE and (run_dir / METRICS_FILE).is_file():
            continue
        info = json.loads(marker.read_text())
        arm_name = str(info.get("arm") or run_dir.parent.name)
        fold = int(info["fold"])
        arm = arms.setdefault(arm_name, ArmRuns(arm=arm_name, label=str(info.get("label") or arm_name)))
        if marker.name == FAILED_FILE:
            arm.failed[fold] = str(info.get("error", "unknown error"))
            continue
        if fold in arm.folds:
            raise AggregationError(f"arm {arm_name!r} has two runs of fold {fold}: {arm.run_dirs[fold]} and {run_dir}")
        arm.folds[fold] = info
        arm.run_dirs[fold] = run_dir
        arm.label = str(info.get("label") or arm.label)
        predictions = run_dir / PREDICTIONS_FILE
        if not predictions.is_file():
            raise AggregationError(f"{predictions}: missing (the run wrote metrics.json but no predictions)")
        arm.predictions.extend(_read_predictions(predictions))
    if not arms:
        raise AggregationError(f"{root}: no runs found (no */fold*/metrics.json)")
    return arms


def check_complete(arm: ArmRuns, num_folds: int) -> list[str]:
    """Problems that forbid summarising ``arm``: missing or failed folds, films predicted twice."""
    problems = []
    for fold in range(num_folds):
        if fold not in arm.folds:
            why = f"failed: {arm.failed[fold]}" if fold in arm.failed else "no metrics.json"
            problems.append(f"arm {arm.arm!r} fold {fold} is missing ({why})")
    extra = sorted(set(arm.folds) - set(range(num_folds)))
    if extra:
        problems.append(f"arm {arm.arm!r} has folds {extra} outside 0..{num_folds - 1}")
    seen: dict[str, int] = {}
    for pred in arm.predictions:
        if pred.image_id in seen:
            problems.append(f"arm {arm.arm!r}: film {pred.image_id!r} is predicted in fold {seen[pred.image_id]} "
                            f"and fold {pred.fold} (a film must be tested exactly once)")
        seen.setdefault(pred.image_id, pred.fold)
    patients: dict[str, int] = {}
    reported: set[str] = set()
    for pred in arm.predictions:
        if patients.setdefault(pred.patient_id, pred.fold) != pred.fold and pred.patient_id not in reported:
            reported.add(pred.patient_id)
            problems.append(f"arm {arm.arm!r}: patient {pred.patient_id!r} is tested in folds "
                            f"{patients[pred.patient_id]} and {pred.fold} (patient-level split violated)")
    return problems


def split_complete(arms: dict[str, ArmRuns], num_folds: int, partial: bool,
                   source: str | Path) -> tuple[dict[str, ArmRuns], dict[str, list[str]]]:
    """(arms with every fold, problems of the others); an AggregationError unless ``partial`` allows gaps."""
    problems = {name: check_complete(arm, num_folds) for name, arm in arms.items()}
    incomplete = {name: p for name, p in problems.items() if p}
    if incomplete and not partial:
        listing = "\n".join(f"  - {p}" for ps in incomplete.values() for p in ps)
        raise AggregationError(f"cannot summarise {source}:\n{listing}\n"
                               "Rerun the sweep or the missing jobs (finished ones are skipped) or pass --partial.")
    complete = {name: arm for name, arm in arms.items() if name not in incomplete}
    if not complete:
        raise AggregationError(f"{source}: no arm has all {num_folds} folds")
    return complete, incomplete
