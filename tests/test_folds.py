"""Patient-level folds: disjoint, stratified, persisted, reused; validation from training patients only."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pneumollm.data.folds import FoldError, load_or_make_folds, make_folds, read_folds, split_fold


def _pairs(n_patients: int = 80, films: int = 2) -> list[tuple[str, int]]:
    """Films of patients with one label each (about 63% positive)."""
    return [(f"P{p:03d}", int(p % 8 < 5)) for p in range(n_patients) for _ in range(1 + p % films)]


def test_each_patient_lands_in_exactly_one_fold_and_folds_are_stratified() -> None:
    pairs = _pairs()
    folds = make_folds(pairs, num_folds=5, seed=0)
    assert set(folds) == {p for p, _ in pairs}
    assert set(folds.values()) == set(range(5))
    labels = dict(pairs)
    overall = sum(labels.values()) / len(labels)
    for fold in range(5):
        members = [p for p, f in folds.items() if f == fold]
        assert len(members) == 16
        assert abs(sum(labels[p] for p in members) / len(members) - overall) < 0.08


def test_patients_with_mixed_labels_use_grouped_stratification() -> None:
    pairs = [*_pairs(), ("P000", 0), ("P001", 0)]  # two patients now have a positive and a negative film
    folds = make_folds(pairs, num_folds=5)
    assert set(folds) == {p for p, _ in pairs}
    for fold in range(5):
        film_labels = [label for p, label in pairs if folds[p] == fold]
        assert 0.4 < sum(film_labels) / len(film_labels) < 0.85


def test_folds_are_written_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "folds.csv"
    first = load_or_make_folds(path, _pairs(), num_folds=5, seed=0)
    again = load_or_make_folds(path, _pairs(), num_folds=5, seed=123)  # a different seed must not reshuffle
    assert again == first == read_folds(path)
    assert path.with_suffix(".json").is_file()


def test_a_changed_cohort_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "folds.csv"
    load_or_make_folds(path, _pairs(40), num_folds=5)
    with pytest.raises(FoldError, match="does not cover 1 patient"):
        load_or_make_folds(path, [*_pairs(40), ("NEW", 1)], num_folds=5)


def test_a_patient_in_two_folds_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "folds.csv"
    path.write_text("patient_id,label,fold\nA,1,0\nB,0,1\nA,1,2\n")
    with pytest.raises(FoldError, match="patient 'A' is in folds 0 and 2"):
        read_folds(path)


def test_too_few_patients_of_a_class_is_a_clear_error() -> None:
    pairs = [(f"P{i}", 1) for i in range(20)] + [("N1", 0), ("N2", 0)]
    with pytest.raises(FoldError, match="too few normal patients for 5-fold"):
        make_folds(pairs, num_folds=5)


@pytest.mark.parametrize("fold", range(5))
def test_validation_comes_from_training_patients_and_never_from_the_test_fold(fold: int) -> None:
    pairs = _pairs()
    labels = dict(pairs)
    folds = make_folds(pairs, num_folds=5)
    split = split_fold(folds, labels, fold, val_fraction=0.2, seed=0)
    assert split.test == {p for p, f in folds.items() if f == fold}
    assert not (split.val & split.test) and not (split.train & split.test) and not (split.train & split.val)
    assert split.train | split.val | split.test == set(labels)
    assert Counter(labels[p] for p in split.val)[0] >= 1 and Counter(labels[p] for p in split.val)[1] >= 1
