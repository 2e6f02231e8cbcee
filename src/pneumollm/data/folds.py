"""Patient-level, label-stratified k-fold splits, made once, persisted as ``folds.csv`` and reused.

Splits are data: every later run reads the same file, so folds cannot drift with library versions.
A validation subset for checkpoint selection and early stopping is carved from each fold's *training*
patients; the test fold is never used for selection.
"""

from __future__ import annotations

import csv
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from pneumollm.data.targets import BINARY, MULTICLASS, MULTILABEL, LabelTask
from pneumollm.errors import UserError
from pneumollm.utils.io import atomic_write, atomic_write_json, sha256_json

FOLDS_FILE = "folds.csv"


class FoldError(UserError, ValueError):
    """Folds that cannot be made or trusted (too few patients, a patient in two folds, a changed cohort)."""


@dataclass(frozen=True)
class PatientLabel:
    """A patient and the target used to stratify them (binary: 1 if any film is positive; a stage: the highest;
    findings: every finding on any film)."""

    patient_id: str
    label: int


def patient_table(pairs: Iterable[tuple[str, int]],
                  task: LabelTask | None = None) -> tuple[list[PatientLabel], bool]:
    """Collapse (patient_id, film target) pairs to one row per patient; also says if any patient has mixed targets."""
    labels: dict[str, set[int]] = defaultdict(set)
    for patient, label in pairs:
        labels[patient].add(int(label))
    mixed = any(len(v) > 1 for v in labels.values())
    combine = (task or LabelTask()).combine
    return [PatientLabel(p, combine(v)) for p, v in sorted(labels.items())], mixed


def _check_binary(counts: Counter, num_folds: int, class_names: Sequence[str]) -> None:
    for label, name in enumerate(class_names):
        if counts.get(label, 0) < num_folds:
            raise FoldError(
                f"too few {name} patients for {num_folds}-fold cross-validation: {counts.get(label, 0)} "
                f"(need at least {num_folds}; the cohort has {counts.get(0, 0)} {class_names[0]} and "
                f"{counts.get(1, 0)} {class_names[1]} patients after skipping unusable films)"
            )


def _check_stages(counts: Counter, num_folds: int, task: LabelTask) -> None:
    short = [f"{task.classes[k]}: {counts.get(k, 0)}" for k in range(len(task.classes)) if counts.get(k, 0) < num_folds]
    if short:
        listing = ", ".join(f"{c} {counts.get(k, 0)}" for k, c in enumerate(task.classes))
        raise FoldError(
            f"too few patients of stage(s) {'; '.join(short)} for {num_folds}-fold cross-validation (every fold "
            f"must hold every stage: need at least {num_folds} patients each; the cohort has {listing} after "
            "skipping unusable films). Merge stages with data.classes and data.label_map, or use fewer folds.")


def _check_findings(patients: Sequence[PatientLabel], num_folds: int, task: LabelTask) -> None:
    problems = []
    for bit, name in enumerate(task.label_columns):
        present = sum((p.label >> bit) & 1 for p in patients)
        if present < num_folds or len(patients) - present < num_folds:
            problems.append(f"{name} present in {present}, absent in {len(patients) - present}")
    if problems:
        raise FoldError(f"too few patients for {num_folds}-fold cross-validation of finding(s): "
                        f"{'; '.join(problems)} (every fold must hold patients with and without each finding: need "
                        f"at least {num_folds} of each). Drop the finding from data.label_columns or use fewer folds.")


def stratification_key(targets: Sequence[int], num_folds: int, task: LabelTask | None = None) -> np.ndarray:
    """What folds are stratified on: the target itself (a class or stage), or for findings the combination of
    findings, with combinations rarer than ``num_folds`` merged into one group (iterative stratification's
    simple cousin: common combinations are balanced exactly, rare ones together)."""
    y = np.asarray([int(t) for t in targets])
    if task is None or task.task != MULTILABEL:
        return y
    counts = Counter(y.tolist())
    rare = [k for k, n in counts.items() if n < num_folds]
    return np.where(np.isin(y, rare), -1, y) if rare else y


def make_folds(pairs: Sequence[tuple[str, int]], num_folds: int = 5, seed: int = 0,
               task: LabelTask | None = None) -> dict[str, int]:
    """Assign each patient to one of ``num_folds`` folds, stratified by target (see ``stratification_key``).

    One target per patient: ``StratifiedKFold`` over the patient table. Patients whose films carry different
    targets: ``StratifiedGroupKFold`` over films grouped by patient. ``task``: binary by default.
    """
    task = task or LabelTask()
    patients, mixed = patient_table(pairs, task)
    counts = Counter(p.label for p in patients)
    if task.task == BINARY:
        _check_binary(counts, num_folds, task.class_names)
    elif task.task == MULTICLASS:
        _check_stages(counts, num_folds, task)
    else:
        _check_findings(patients, num_folds, task)
    with warnings.catch_warnings():  # a merged group of rare finding combinations may be smaller than the folds
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        if not mixed:
            ids = np.array([p.patient_id for p in patients])
            y = stratification_key([p.label for p in patients], num_folds, task)
            splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
            return {str(ids[i]): fold for fold, (_, test) in enumerate(splitter.split(ids, y)) for i in test}
        films = np.array([p for p, _ in pairs])
        y = stratification_key([label for _, label in pairs], num_folds, task)
        splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
        return {str(films[i]): fold for fold, (_, test) in enumerate(splitter.split(films, y, groups=films))
                for i in test}


def write_folds(path: str | Path, assignment: dict[str, int], pairs: Sequence[tuple[str, int]],
                num_folds: int, seed: int, task: LabelTask | None = None) -> Path:
    """Write ``folds.csv`` (``patient_id,label,fold``; label: the patient's stratification target) and a
    ``folds.json`` sidecar describing how it was made."""
    path = Path(path)
    task = task or LabelTask()
    patients, _ = patient_table(pairs, task)

    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["patient_id", "label", "fold"])
            out.writerows([p.patient_id, p.label, assignment[p.patient_id]] for p in patients)

    atomic_write(path, writer)
    task_info = {} if task.task == BINARY else {"task": task.task, "classes": list(task.output_names)}
    atomic_write_json(path.with_suffix(".json"), {
        "num_folds": num_folds, "seed": seed, "patients": len(patients), **task_info,
        "patients_hash": sha256_json(sorted(p.patient_id for p in patients)),
    })
    return path


def read_folds(path: str | Path) -> dict[str, int]:
    """Read ``folds.csv``; a patient listed in two different folds is an error."""
    path = Path(path)
    if not path.is_file():
        raise FoldError(f"{path}: folds file not found")
    assignment: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"patient_id", "fold"} <= set(reader.fieldnames):
            raise FoldError(f"{path}: need columns patient_id and fold, found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            patient, fold = row["patient_id"].strip(), int(row["fold"])
            if patient in assignment and assignment[patient] != fold:
                raise FoldError(f"{path} row {line}: patient {patient!r} is in folds {assignment[patient]} and {fold}")
            assignment[patient] = fold
    return assignment


def load_or_make_folds(path: str | Path, pairs: Sequence[tuple[str, int]], num_folds: int = 5, seed: int = 0,
                       regenerate: bool = False, task: LabelTask | None = None) -> dict[str, int]:
    """Reuse ``folds.csv`` when it exists (checking it covers the cohort), else make and persist it."""
    path = Path(path)
    if path.is_file() and not regenerate:
        assignment = read_folds(path)
        missing = sorted({p for p, _ in pairs} - set(assignment))
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise FoldError(
                f"{path} does not cover {len(missing)} patient(s) of the cohort ({shown}): the cohort changed since "
                "the folds were made. Delete the file (or set data.regenerate_folds=true) to make new folds; "
                "results from the old folds are then no longer comparable."
            )
        found = len(set(assignment.values()))
        if found != num_folds:
            raise FoldError(f"{path} has {found} folds but data.num_folds={num_folds}")
        return assignment
    assignment = make_folds(pairs, num_folds=num_folds, seed=seed, task=task)
    write_folds(path, assignment, pairs, num_folds, seed, task)
    return assignment


@dataclass(frozen=True)
class FoldSplit:
    """Patients of one cross-validation fold: train and validation come from the training folds only."""

    train: frozenset[str]
    val: frozenset[str]
    test: frozenset[str]


def split_fold(assignment: dict[str, int], patient_labels: dict[str, int], fold: int, val_fraction: float,
               seed: int, task: LabelTask | None = None) -> FoldSplit:
    """Split ``fold``: its patients are the test set; a stratified ``val_fraction`` of the others is validation
    (stratified on ``patient_labels``: the patients' targets, see ``stratification_key``)."""
    if fold not in set(assignment.values()):
        raise FoldError(f"fold {fold} does not exist (folds: {sorted(set(assignment.values()))})")
    test = sorted(p for p, f in assignment.items() if f == fold and p in patient_labels)
    rest = sorted(p for p, f in assignment.items() if f != fold and p in patient_labels)
    if val_fraction <= 0:
        return FoldSplit(frozenset(rest), frozenset(), frozenset(test))
    y = stratification_key([patient_labels[p] for p in rest], 2, task).tolist()  # combinations of one merged
    counts = Counter(y)
    n_val = max(2, round(val_fraction * len(rest)))
    fits = n_val >= len(counts) and len(rest) - n_val >= len(counts)
    stratify = y if min(counts.values()) >= 2 and len(counts) >= 2 and n_val >= 2 and fits else None
    train, val = train_test_split(rest, test_size=n_val, stratify=stratify, random_state=seed + fold)
    return FoldSplit(frozenset(train), frozenset(val), frozenset(test))
