"""Patient-level, label-stratified k-fold splits, made once, persisted as ``folds.csv`` and reused.

Splits are data: every later run reads the same file, so folds cannot drift with library versions.
A validation subset for checkpoint selection and early stopping is carved from each fold's *training*
patients; the test fold is never used for selection.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from pneumollm.errors import UserError
from pneumollm.utils.io import atomic_write, atomic_write_json, sha256_json

FOLDS_FILE = "folds.csv"


class FoldError(UserError, ValueError):
    """Folds that cannot be made or trusted (too few patients, a patient in two folds, a changed cohort)."""


@dataclass(frozen=True)
class PatientLabel:
    """A patient and the label used to stratify them (1 if any of their films is positive)."""

    patient_id: str
    label: int


def patient_table(pairs: Iterable[tuple[str, int]]) -> tuple[list[PatientLabel], bool]:
    """Collapse (patient_id, film label) pairs to one row per patient; also says if any patient has mixed labels."""
    labels: dict[str, set[int]] = defaultdict(set)
    for patient, label in pairs:
        labels[patient].add(int(label))
    mixed = any(len(v) > 1 for v in labels.values())
    return [PatientLabel(p, max(v)) for p, v in sorted(labels.items())], mixed


def make_folds(pairs: Sequence[tuple[str, int]], num_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Assign each patient to one of ``num_folds`` folds, stratified by label.

    One label per patient: ``StratifiedKFold`` over the patient table. Patients whose films carry different
    labels: ``StratifiedGroupKFold`` over films grouped by patient.
    """
    patients, mixed = patient_table(pairs)
    counts = Counter(p.label for p in patients)
    for label, name in ((0, "normal"), (1, "pneumoconiosis")):
        if counts.get(label, 0) < num_folds:
            raise FoldError(
                f"too few {name} patients for {num_folds}-fold cross-validation: {counts.get(label, 0)} "
                f"(need at least {num_folds}; the cohort has {counts.get(0, 0)} normal and {counts.get(1, 0)} "
                "pneumoconiosis patients after skipping unusable films)"
            )
    if not mixed:
        ids = np.array([p.patient_id for p in patients])
        y = np.array([p.label for p in patients])
        splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
        return {str(ids[i]): fold for fold, (_, test) in enumerate(splitter.split(ids, y)) for i in test}
    films = np.array([p for p, _ in pairs])
    y = np.array([label for _, label in pairs])
    splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    return {str(films[i]): fold for fold, (_, test) in enumerate(splitter.split(films, y, groups=films)) for i in test}


def write_folds(path: str | Path, assignment: dict[str, int], pairs: Sequence[tuple[str, int]],
                num_folds: int, seed: int) -> Path:
    """Write ``folds.csv`` (``patient_id,label,fold``) and a ``folds.json`` sidecar describing how it was made."""
    path = Path(path)
    patients, _ = patient_table(pairs)

    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["patient_id", "label", "fold"])
            out.writerows([p.patient_id, p.label, assignment[p.patient_id]] for p in patients)

    atomic_write(path, writer)
    atomic_write_json(path.with_suffix(".json"), {
        "num_folds": num_folds, "seed": seed, "patients": len(patients),
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
                       regenerate: bool = False) -> dict[str, int]:
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
    assignment = make_folds(pairs, num_folds=num_folds, seed=seed)
    write_folds(path, assignment, pairs, num_folds, seed)
    return assignment


@dataclass(frozen=True)
class FoldSplit:
    """Patients of one cross-validation fold: train and validation come from the training folds only."""

    train: frozenset[str]
    val: frozenset[str]
    test: frozenset[str]


def split_fold(assignment: dict[str, int], patient_labels: dict[str, int], fold: int, val_fraction: float,
               seed: int) -> FoldSplit:
    """Split ``fold``: its patients are the test set; a stratified ``val_fraction`` of the others is validation."""
    if fold not in set(assignment.values()):
        raise FoldError(f"fold {fold} does not exist (folds: {sorted(set(assignment.values()))})")
    test = sorted(p for p, f in assignment.items() if f == fold and p in patient_labels)
    rest = sorted(p for p, f in assignment.items() if f != fold and p in patient_labels)
    if val_fraction <= 0:
        return FoldSplit(frozenset(rest), frozenset(), frozenset(test))
    y = [patient_labels[p] for p in rest]
    counts = Counter(y)
    n_val = max(2, round(val_fraction * len(rest)))
    stratify = y if min(counts.values()) >= 2 and len(counts) == 2 and n_val >= 2 else None
    train, val = train_test_split(rest, test_size=n_val, stratify=stratify, random_state=seed + fold)
    return FoldSplit(frozenset(train), frozenset(val), frozenset(test))
