"""Collect the fold runs of a study folder into per-arm results, refusing what cannot be summarised honestly:
missing, failed or stale folds, a film tested twice, and runs of different cohorts or folds in one study."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumollm.data.targets import BINARY, BINARY_CLASSES, MULTICLASS, MULTILABEL, LabelTask
from pneumollm.errors import UserError
from pneumollm.training.fold_metrics import FoldMetrics
from pneumollm.training.records import PREDICTION_COLUMNS, RAW_COLUMNS, task_column_names
from pneumollm.training.run_folder import CONFIG_FILE, PREDICTIONS_FILE, RunFolder, run_dirs_under

RUNS_SUBDIR = "runs"  # paper sweeps keep their runs in <study>/runs/<arm>/fold<k>


class AggregationError(UserError, ValueError):
    """Runs that cannot be summarised honestly (a missing fold, a film predicted twice, no runs at all)."""


@dataclass
class Prediction:
    image_id: str
    patient_id: str
    fold: int
    label: int  # the "any" class (0/1; pneumoconiosis by default, data.class_names)
    prob: float  # P(label 1), as written (exactly since the logit column exists; to 6 decimals before)
    extra: dict[str, str] = field(default_factory=dict)  # the cohort's own columns (site, scanner, ...)
    target: tuple[int, ...] = ()  # staged / multi-label runs: (stage index,) or one 0/1 per finding
    outputs: tuple[float, ...] = ()  # staged / multi-label runs: the model's probability of each output
    logit: float | None = None  # log-odds of prob from the model's logits (None in runs made before it existed)


@dataclass
class ArmRuns:
    """All fold runs of one arm."""

    arm: str
    label: str
    task: str = BINARY
    classes: tuple[str, ...] = ()  # the task's output names (stages or findings), as the runs recorded them
    folds: dict[int, FoldMetrics] = field(default_factory=dict)  # fold -> its metrics.json
    predictions: list[Prediction] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # fold -> why the fold has no current result
    run_dirs: dict[int, Path] = field(default_factory=dict)
    class_names: tuple[str, str] = BINARY_CLASSES  # the words of label 0 and label 1 (data.class_names)
    size: str | None = None  # size_name of the runs (tiny: the CPU stand-ins); None when unrecorded


def read_predictions(path: Path, task: LabelTask | None = None) -> list[Prediction]:
    """A run's ``predictions.csv``; ``task``: the run's task, whose columns (``task_column_names``) fill
    ``target`` and ``outputs`` instead of ``extra``."""
    task = task or LabelTask()
    own = {*PREDICTION_COLUMNS, *RAW_COLUMNS, *task_column_names(task)}
    with path.open(newline="", encoding="utf-8") as handle:
        return [Prediction(r["image_id"], r["patient_id"], int(r["fold"]), int(r["label"]), float(r["prob"]),
                           {k: v for k, v in r.items() if k not in own and k is not None}, *_task_values(task, r),
                           logit=float(r["logit"]) if r.get("logit") else None)
                for r in csv.DictReader(handle)]


def _task_values(task: LabelTask, row: dict[str, str]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if task.task == BINARY:
        return (), ()
    if task.task == MULTICLASS:
        index = {c: k for k, c in enumerate(task.classes)}
        return (index[row["stage"]],), tuple(float(row[f"prob_stage_{c}"]) for c in task.classes)
    return (tuple(int(row[f"true_{n}"]) for n in task.label_columns),
            tuple(float(row[f"prob_{n}"]) for n in task.label_columns))


def run_task(info: FoldMetrics) -> LabelTask:
    """The task a run's ``metrics.json`` records (binary for runs made before tasks existed)."""
    task = str(info.task or BINARY)
    classes = [str(c) for c in info.classes or []]
    if task == MULTICLASS:
        return LabelTask(task=task, classes=tuple(classes))
    if task == MULTILABEL:
        return LabelTask(task=task, label_columns=tuple(classes))
    return LabelTask()


def study_dir(run_dir: Path) -> Path:
    """The study a run belongs to: ``<study>/<arm>/fold<k>`` or ``<study>/runs/<arm>/fold<k>``."""
    parent = run_dir.parent.parent
    return parent.parent if parent.name == RUNS_SUBDIR else parent


def find_studies(root: str | Path) -> list[Path]:
    """The study folders under ``root`` (``root`` itself when it is one), e.g. one per cohort of a table."""
    root = Path(root)
    if not root.is_dir():
        raise AggregationError(f"{root}: folder not found")
    studies = sorted({study_dir(d) for d in run_dirs_under(root)})
    inside = [s for s in studies if s == root or root in s.parents]
    return inside or ([root] if root.name == RUNS_SUBDIR else [])


def collect_runs(experiment_dir: str | Path) -> dict[str, ArmRuns]:
    """Read every fold run under ``experiment_dir`` (one study) with its status.

    Only ``complete`` runs (results of the config that owns the folder) count; failed, stale and unfinished
    ones are recorded per fold with the reason. Debug runs (``debug=...``) never count.
    """
    root = Path(experiment_dir)
    if not root.is_dir():
        raise AggregationError(f"{root}: experiment folder not found")
    arms: dict[str, ArmRuns] = {}
    for run_dir in run_dirs_under(root):
        status = RunFolder(run_dir).status()
        if status.debug:  # not even a missing fold
            continue
        arm_name, fold, info = status.arm, status.fold, status.metrics
        arm = arms.setdefault(arm_name, ArmRuns(arm=arm_name, label=str(status.label or arm_name)))
        if not status.counts or info is None:
            arm.failed.setdefault(fold, f"{status.state}: {status.reason} ({run_dir})")
            continue
        if fold in arm.folds:
            raise AggregationError(f"arm {arm_name!r} has two runs of fold {fold}: {arm.run_dirs[fold]} and {run_dir}")
        task = run_task(info)
        kind = (task.task, task.output_names if task.task != BINARY else ())
        if arm.folds and kind != (arm.task, arm.classes):
            raise AggregationError(f"arm {arm_name!r} mixes tasks: {run_dir} is {kind[0]} {list(kind[1])}, its other "
                                   f"folds {arm.task} {list(arm.classes)}; keep each task in its own folder")
        arm.task, arm.classes = kind
        arm.failed.pop(fold, None)
        arm.folds[fold] = info
        arm.run_dirs[fold] = run_dir
        arm.label = str(info.label or arm.label)
        arm.class_names, arm.size = recorded_words(run_dir, info)
        predictions = run_dir / PREDICTIONS_FILE
        if not predictions.is_file():
            raise AggregationError(f"{predictions}: missing (the run wrote metrics.json but no predictions)")
        arm.predictions.extend(read_predictions(predictions, task))
    if not arms:
        raise AggregationError(f"{root}: no runs found (no */fold*/metrics.json)")
    check_one_cohort(arms)
    return arms


def recorded_words(run_dir: Path, info: FoldMetrics) -> tuple[tuple[str, str], str | None]:
    """(class names, size) a run recorded in metrics.json, else in its config.yaml (runs made before
    ``data.class_names``), else the defaults."""
    names, size = info.class_names, info.size
    if names is None or size is None:
        config = _config_values(run_dir)
        names = names or (config.get("data") or {}).get("class_names")
        size = size or config.get("size_name")
    words = tuple(str(n) for n in names) if names and len(names) == 2 else BINARY_CLASSES
    return words, None if size in (None, "?") else str(size)  # type: ignore[return-value]


def _config_values(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config.yaml as plain data ({} when absent or unreadable)."""
    import yaml

    try:
        data = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def check_one_cohort(arms: dict[str, ArmRuns]) -> None:
    """Refuse a study whose runs were made on different cohorts or different folds, naming the runs."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for arm in arms.values():
        for fold, info in sorted(arm.folds.items()):
            cohort = info.cohort or {}
            key = (str(cohort.get("films", "unrecorded")), str(cohort.get("folds", "unrecorded")))
            groups[key].append(f"{arm.arm}/fold{fold} ({info.cohort_name or '?'})")
    if len(groups) > 1:
        listing = "\n".join(f"  - films {films}, folds {folds}: " + ", ".join(runs)
                            for (films, folds), runs in sorted(groups.items()))
        raise AggregationError("the runs of this study were made on different cohorts or folds, so they cannot "
                               f"be compared in one table:\n{listing}\nKeep one cohort per folder (the default "
                               "folders already separate cohorts by name) or rerun the odd runs.")


def check_complete(arm: ArmRuns, num_folds: int) -> list[str]:
    """Problems that forbid summarising ``arm``: missing, failed or stale folds, films predicted twice."""
    problems = []
    for fold in range(num_folds):
        if fold not in arm.folds:
            why = arm.failed.get(fold, "no metrics.json")
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


def _fold_threshold(run_dir: Path, info: FoldMetrics, default: float) -> float:
    """One fold's ``threshold``: its metrics.json, else its config.yaml, else ``default``."""
    if info.threshold is not None:
        return float(info.threshold)
    config = RunFolder(run_dir).config()
    if config is not None:
        from omegaconf import OmegaConf

        value = OmegaConf.select(config, "threshold", default=None)
        return default if value is None else float(value)
    return default


def run_thresholds(arm: ArmRuns) -> dict[int, float]:
    """Each fold's cut-off on P(label 1) (``threshold``; 0.5 where the run recorded none)."""
    return {fold: _fold_threshold(arm.run_dirs[fold], info, 0.5) for fold, info in arm.folds.items()}
