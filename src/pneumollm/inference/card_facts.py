"""What an export's model card reports that the suite can fill in, gathered when the export is made and kept in
``export.json`` (so the card can be rewritten from the record alone): the data source and which films were used
or skipped, the patient-level split, the selection, threshold and recalibration protocol, discrimination and
calibration of the arm's pooled out-of-fold predictions with patient-bootstrap intervals, and the arm's external and
subgroup results where its study folder holds them. docs/model_card.md lists which reporting items each answers.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pneumollm.analysis.auc import binary_metrics
from pneumollm.analysis.calibration import summarise_calibration
from pneumollm.analysis.collect import Prediction, study_dir
from pneumollm.analysis.stats import bootstrap_auc_by_patient
from pneumollm.data.cohort_report import report_counts
from pneumollm.data.preprocess import REPORT_FILE
from pneumollm.data.targets import BINARY, BINARY_CLASSES, MULTICLASS
from pneumollm.training.calibration_metrics import CALIBRATION_METRICS
from pneumollm.training.fold_metrics import FoldMetrics

BINARY_FIGURES = ("sensitivity", "specificity", "accuracy", "auc", "avg")


def _number(value: Any) -> float | None:
    """A figure for JSON: a float, None where it does not exist (NaN, empty)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def data_facts(metrics: Sequence[FoldMetrics], config: Any) -> dict[str, Any]:
    """The cohort the folds were trained and tested on: its source, the films and patients the cross-validation
    used (each tested once), and from the prepared cohort's ``preprocess_report.csv`` the films listed, used and
    skipped with their reasons (None where the report is no longer where the run left it)."""
    source = OmegaConf.select(config, "data.source") or {}
    kind = str(source.get("kind", "?"))
    named = {"manifest": source.get("manifest"), "dicom_folder": source.get("folder")}.get(kind)
    tested = [m.splits.get("test", {}) for m in metrics]
    folder = next((m.cohort_folder for m in metrics if m.cohort_folder), None)
    return {
        "cohort": str(OmegaConf.select(config, "data.cohort") or "?"), "source": kind,
        "source_name": Path(str(named)).name if named else None,
        "demo": {k: source.get(k) for k in ("n_patients", "seed", "signal_strength")} if kind == "demo" else None,
        **{key: sum(int(t.get(part, 0)) for t in tested) for key, part in
           (("films", "films"), ("patients", "patients"), ("positive_films", "positives"),
            ("positive_patients", "positive_patients"))},
        "report": report_counts(Path(folder) / REPORT_FILE) if folder else None,
        "min_film_size": OmegaConf.select(config, "data.min_film_size"),
        "allowed_modalities": list(OmegaConf.select(config, "data.allowed_modalities") or []),
    }


def stratified_on(task: str, class_names: Sequence[str]) -> str:
    """What the folds (and each fold's validation patients) are stratified on, in words."""
    if task == BINARY:
        return f"whether the patient has any {class_names[1]} film"
    if task == MULTICLASS:
        return "the patient's highest stage"
    return "the patient's combination of findings (combinations rarer than the folds merged)"


def split_facts(metrics: Sequence[FoldMetrics], config: Any) -> dict[str, Any]:
    """The patient-level cross-validation: folds, the validation share of each fold's training patients, what
    both are stratified on, which patients select the checkpoint, and each fold's split sizes."""
    data = config.data
    task = str(data.get("task", BINARY))
    names = list(data.get("class_names") or BINARY_CLASSES)
    return {"num_folds": int(data.get("num_folds", len(metrics))), "folds_exported": len(metrics),
            "val_fraction": float(data.get("val_fraction", 0.0)), "selection_split": str(
                data.get("selection_split", "validation")), "folds_seed": data.get("folds_seed"),
            "task": task, "stratified_on": stratified_on(task, names),
            "per_fold": [{"fold": m.fold, **{k: dict(v) for k, v in m.splits.items()}} for m in metrics]}


def protocol_facts(metrics: Sequence[FoldMetrics], config: Any) -> dict[str, Any]:
    """How each fold's model and cut-off were chosen: the checkpoint (best validation figure or last epoch), the
    threshold (fixed or validation Youden) and the recalibration (none, temperature or platt)."""
    checkpoint = OmegaConf.select(config, "callbacks.checkpoint") or {}
    return {"selection": sorted({str(m.selection or "best") for m in metrics}),
            "monitor": checkpoint.get("monitor"), "mode": checkpoint.get("mode"),
            "max_epochs": OmegaConf.select(config, "trainer.max_epochs"),
            "threshold_modes": sorted({str(m.threshold_mode or "fixed") for m in metrics}),
            "calibration": sorted({str((m.calibration or {}).get("method", "none")) for m in metrics})}


def performance_facts(predictions: Sequence[Prediction], thresholds: dict[int, float],
                      n_boot: int = 2000) -> dict[str, Any] | None:
    """Discrimination and calibration of the pooled out-of-fold predictions (each fold's model on its own test
    films): sensitivity, specificity, accuracy (each film at its fold's threshold), AUC with its 95 % patient
    bootstrap interval, and Brier, ECE, slope and intercept with theirs (``analysis.calibration``), with the
    calibration figures' mean and std over folds. None without predictions."""
    if not predictions:
        return None
    labels = [p.label for p in predictions]
    probs = [p.prob for p in predictions]
    patients = [p.patient_id for p in predictions]
    figures = binary_metrics(labels, probs, [thresholds.get(p.fold, 0.5) for p in predictions])
    auc = bootstrap_auc_by_patient(labels, probs, patients, n_boot=n_boot)
    calibration = summarise_calibration(labels, probs, [p.logit for p in predictions], patients,
                                        folds=[p.fold for p in predictions], n_boot=n_boot)
    return {"films": len(predictions), "patients": len(set(patients)), "bootstrap": n_boot,
            "discrimination": {m: _number(figures[m]) for m in BINARY_FIGURES},
            "auc": {"estimate": _number(auc.estimate), "ci_low": _number(auc.low), "ci_high": _number(auc.high)},
            "calibration": {m: {"estimate": _number(calibration.pooled[m].estimate),
                                "ci_low": _number(calibration.pooled[m].low),
                                "ci_high": _number(calibration.pooled[m].high),
                                "fold_mean": _number(calibration.mean.get(m)),
                                "fold_std": _number(calibration.std.get(m))} for m in CALIBRATION_METRICS}}


def _arm_rows(path: Path, arm: str) -> list[dict[str, Any]]:
    """The rows of a results CSV for ``arm``, numbers as floats (None where empty)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.DictReader(handle) if r.get("arm") == arm]
    except OSError:
        return []
    words = ("arm", "label", "value")
    return [{k: v if k in words else _number(v) for k, v in r.items() if k is not None} for r in rows]


def external_facts(arm_dir: Path, arm: str) -> list[dict[str, Any]]:
    """The arm's rows of its study's external validations (``<study>/external/<cohort>/table.csv``, written by
    ``pneumollm-external``), one per external cohort."""
    study = study_dir(arm_dir / "fold0")
    return [{"cohort": table.parent.name, **row} for table in sorted(study.glob("external/*/table.csv"))
            for row in _arm_rows(table, arm)]


def subgroup_facts(arm_dir: Path, arm: str) -> dict[str, list[dict[str, Any]]]:
    """The arm's rows of its study's subgroup tables (``<study>/by_<column>.csv``, ``pneumollm-aggregate --by``),
    per column."""
    study = study_dir(arm_dir / "fold0")
    found = {path.stem.removeprefix("by_"): _arm_rows(path, arm) for path in sorted(study.glob("by_*.csv"))}
    return {column: rows for column, rows in found.items() if rows}


def card_facts(arm_dir: Path, arm: str, metrics: Sequence[FoldMetrics], config: Any,
               predictions: Sequence[Prediction], n_boot: int = 2000) -> dict[str, Any]:
    """Every fact of the model card, for ``export.json``."""
    thresholds = {int(m.fold): float(m.threshold if m.threshold is not None else 0.5)
                  for m in metrics if m.fold is not None}
    return {"data": data_facts(metrics, config), "split": split_facts(metrics, config),
            "protocol": protocol_facts(metrics, config),
            "performance": performance_facts(predictions, thresholds, n_boot),
            "external": external_facts(arm_dir, arm), "subgroups": subgroup_facts(arm_dir, arm),
            "task": str(config.data.get("task", BINARY))}

