"""The table's figures: the ROC band resamples patients, t-SNE shows one fold's model, the film panel shows errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_curve

from pneumollm.analysis import figures, report
from pneumollm.analysis.collect import collect_runs
from pneumollm.analysis.figures import Call, roc_at, roc_band_by_patient, roc_points, select_panel_films
from pneumollm.analysis.report import aggregate_table, run_thresholds, tsne_features
from tests.test_aggregate import _fake_run

GRID = np.linspace(0, 1, 101)


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, 1 / (1 + np.exp(-(1.2 * labels - 0.6 + rng.normal(0, 1, n))))


def _width(band: figures.RocBand) -> float:
    return float(np.mean(band.high - band.low))


def test_roc_points_match_sklearn_and_steps_take_their_top() -> None:
    labels, probs = _scores(80, 3)
    probs = np.round(probs, 1)  # ties
    ours = roc_at(*roc_points(labels, probs), GRID)
    fpr, tpr, _ = roc_curve(labels, probs)
    assert np.allclose(ours, roc_at(fpr, tpr, GRID))
    assert roc_at(np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0]), np.array([0.0]))[0] == 1.0
    assert roc_at(np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.0]), np.array([0.25]))[0] == 0.5


def test_the_band_contains_the_curve_and_narrows_with_more_patients() -> None:
    small = roc_band_by_patient(*_scores(60, 0), [f"p{i}" for i in range(60)], n_boot=400)
    large = roc_band_by_patient(*_scores(600, 0), [f"p{i}" for i in range(600)], n_boot=400)
    for band in (small, large):
        assert np.all(band.low <= band.tpr + 1e-12) and np.all(band.tpr <= band.high + 1e-12)
        assert np.all(np.diff(band.low) >= -1e-12) and band.resamples == 400
    assert _width(large) < 0.5 * _width(small)
    assert small.patients == 60
    assert roc_band_by_patient([1, 1], [0.2, 0.3], ["a", "b"]) is None  # one class: no ROC


def test_the_band_resamples_patients_not_films() -> None:
    labels, probs = _scores(50, 1)
    single = roc_band_by_patient(labels, probs, [f"p{i}" for i in range(50)], n_boot=300, seed=4)
    # every patient with four identical films: a resample draws a patient's films together, so the curves are
    # those of one film per patient, and the band is the same
    four = np.repeat(np.arange(50), 4)
    grouped = roc_band_by_patient(labels[four], probs[four], [f"p{i}" for i in four], n_boot=300, seed=4)
    assert np.allclose(grouped.low, single.low) and np.allclose(grouped.high, single.high)
    # the same films as if each were another patient: a film-level resample, four times too confident
    as_films = roc_band_by_patient(labels[four], probs[four], [f"f{i}" for i in range(200)], n_boot=300, seed=4)
    assert _width(as_films) < 0.7 * _width(grouped)


def test_plot_roc_bands_every_arm_from_its_patients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for arm in ("a1", "a2"):
        for fold in range(3):
            _fake_run(tmp_path / "runs", arm, fold, [(f"{arm}{fold}{k}", f"P{fold}{k // 2}", k % 2, 0.1 + 0.2 * k)
                                                     for k in range(4)])
    seen = []
    real = figures.roc_band_by_patient

    def spy(labels, probs, patients, **kwargs):
        seen.append(list(patients))
        return real(labels, probs, patients, **kwargs)

    monkeypatch.setattr(figures, "roc_band_by_patient", spy)
    arms = collect_runs(tmp_path / "runs")
    out = aggregate_table(tmp_path / "runs", tmp_path, "table4", num_folds=3, n_boot=50, use_wandb=False, arms=arms)
    assert tmp_path / "roc.png" in out.figures and Image.open(tmp_path / "roc.png").size[0] > 500
    assert seen == [[p.patient_id for p in arms[a].predictions] for a in ("a1", "a2")]
    assert len(set(seen[0])) == 6  # two films per patient


def _features_run(root: Path, arm: str, fold: int, n: int) -> None:
    preds = [(f"{arm}-{fold}-{k}", f"P{fold}-{k}", k % 2, 0.3 + 0.4 * (k % 2)) for k in range(n)]
    run = _fake_run(root, arm, fold, preds)
    rng = np.random.default_rng(fold)
    np.savez(run / "features.npz", features=rng.normal(fold, 1, (n, 5)).astype("float32"),
             labels=np.arange(n) % 2, image_ids=np.array([p[0] for p in preds]))


def test_tsne_shows_one_fold_per_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for arm in ("a1", "a2"):
        for fold, n in ((0, 7), (1, 9), (2, 11)):
            _features_run(tmp_path / "runs", arm, fold, n)
    shown = {}

    def capture(features, path, title, seed=0, **words):
        shown.update(features=features, title=title)
        return figures.plot_tsne(features, path, title, seed, **words)

    monkeypatch.setattr(report, "plot_tsne", capture)
    aggregate_table(tmp_path / "runs", tmp_path, "table4", num_folds=3, n_boot=20, use_wandb=False)
    saved = np.load(tmp_path / "runs" / "a1" / "fold0" / "features.npz")["features"]
    assert set(shown["features"]) == {"a1", "a2"}
    assert all(x.shape == (7, 5) for x, _ in shown["features"].values())  # fold 0's films only, not all 27
    assert np.array_equal(shown["features"]["a1"][0], saved)
    assert "fold 0" in shown["title"] and (tmp_path / "tsne.png").is_file()
    fold, features = tsne_features(list(collect_runs(tmp_path / "runs").values()), fold=2)
    assert fold == 2 and all(x.shape[0] == 11 for x, _ in features.values())


def test_selection_covers_each_arms_false_positives_and_negatives() -> None:
    films = {f"n{i}": (0, i % 3) for i in range(6)} | {f"p{i}": (1, i % 3) for i in range(6)}
    right = {f: Call(0.9 if label else 0.1) for f, (label, _) in films.items()}
    calls = {"A": {**right, "p5": Call(0.2)},  # A misses p5
             "B": {**right, "n4": Call(0.7)},  # B calls n4 positive
             "C": {**right, "p2": Call(0.9, threshold=0.95)}}  # right at 0.5, a miss at C's threshold
    chosen = select_panel_films(films, calls, max_films=5)
    ids = [f for f, _, _ in chosen]
    assert {"p5", "n4", "p2"} <= set(ids) and len(chosen) == 5
    assert {label for _, label, _ in chosen} == {0, 1}
    assert [label for _, label, _ in chosen] == sorted(label for _, label, _ in chosen)  # normals first
    clean = select_panel_films(films, {"A": right}, max_films=4)
    assert [label for _, label, _ in clean] == [0, 0, 1, 1] and len({fold for _, _, fold in clean}) > 1


def _cohort(folder: Path, films: list[tuple[str, str, int]]) -> None:
    """A prepared cohort folder (cohort.csv and PNG films) as pneumollm-prepare leaves it."""
    (folder / "films").mkdir(parents=True)
    fields = ["image_id", "patient_id", "label", "source_path", "content_hash", "file", "crop_status",
              "crop_reason", "notes"]
    with (folder / "cohort.csv").open("w", newline="") as handle:
        out = csv.DictWriter(handle, fieldnames=fields)
        out.writeheader()
        for k, (image_id, patient, label) in enumerate(films):
            Image.fromarray(np.full((32, 32), 40 + 5 * k, dtype=np.uint8)).save(folder / "films" / f"{k}.png")
            out.writerow({"image_id": image_id, "patient_id": patient, "label": label, "source_path": image_id,
                          "content_hash": str(k), "file": f"films/{k}.png", "crop_status": "ok", "crop_reason": "",
                          "notes": ""})


def test_the_panel_shows_an_arms_misclassified_film_at_its_threshold(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    films = [(f"P{f}{k}/1.dcm", f"P{f}{k}", k % 2) for f in range(3) for k in range(6)]
    _cohort(cohort, films)
    probs = {"good": {i: 0.9 if lab else 0.1 for i, _, lab in films},
             "strict": {i: (0.85 if lab else 0.1) for i, _, lab in films}}
    probs["good"]["P25/1.dcm"] = 0.3  # a false negative of "good" in fold 2, far from the first ids
    for arm, by_film in probs.items():
        for fold in range(3):
            preds = [(i, p, lab, by_film[i]) for i, p, lab in films if i.startswith(f"P{fold}")]
            run = _fake_run(tmp_path / "runs", arm, fold, preds)
            info = json.loads((run / "metrics.json").read_text())
            (run / "metrics.json").write_text(json.dumps({**info, "cohort_folder": str(cohort)}))
            if arm == "strict" and fold == 1:
                (run / "config.yaml").write_text("threshold: 0.875\n")  # 0.85 is a miss at this cut-off
    arms = collect_runs(tmp_path / "runs")
    assert run_thresholds(arms["strict"]) == {0: 0.5, 1: 0.875, 2: 0.5}
    chosen, calls = report._panel_films(list(arms.values()), max_films=6)
    ids = [f.image_id for f in chosen]
    assert "P25/1.dcm" in ids  # good's only error
    assert any(f.fold == 1 and f.label == 1 for f in chosen)  # strict's misses, at its run's threshold
    assert calls["strict"]["P11/1.dcm"].threshold == 0.875 and not calls["strict"]["P11/1.dcm"].positive
    assert len({f.fold for f in chosen}) > 1 and all(f.file is not None and f.file.is_file() for f in chosen)
    report_ = aggregate_table(tmp_path / "runs", tmp_path, "table4", num_folds=3, n_boot=20, use_wandb=False,
                              arms=arms)
    assert tmp_path / "films.png" in report_.figures
    width, height = Image.open(tmp_path / "films.png").size
    assert width > 600 and height > 300
