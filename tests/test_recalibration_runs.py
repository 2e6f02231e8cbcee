"""Recalibrated runs end to end: fitted on each fold's validation patients only, applied to the test predictions
(the model's own kept), to ``pneumollm-predict``, exports and external validation; ``calibration=none`` takes none
of these paths."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict
from scipy.special import expit

from pneumollm.cli.export import main as export_main
from pneumollm.cli.external import main as external_main
from pneumollm.cli.predict import main as predict_main
from pneumollm.training import recalibration as recalibration_module
from pneumollm.training import thresholds as thresholds_module
from pneumollm.training.prediction_metrics import prediction_metrics
from pneumollm.training.records import PREDICTION_COLUMNS, config_hash
from pneumollm.training.run import run_fold
from tests.helpers import compose_train, make_noisy_manifest, make_toy_manifest
from tests.test_training import TOY

SETTINGS = [*TOY, "logger=none", "trainer.max_epochs=2", "data.val_fraction=0.4"]
ARM = "table/study/timm_resnet18"  # a study's arm folder, as pneumollm-external finds arms


def _cfg(manifest: Path, root: Path, fold: int, run_dir: Path, *extra: str):
    return compose_train([*SETTINGS, f"data.source.manifest={manifest}", f"paths.root_dir={root}",
                          f"data.fold={fold}", *extra], run_dir=run_dir)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def platt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three folds recalibrated by Platt scaling with validation thresholds: <root>/table/study/<arm>/fold<k>."""
    root = tmp_path_factory.mktemp("platt")
    manifest = make_noisy_manifest(root / "cohort")
    for fold in range(3):
        run_fold(_cfg(manifest, root, fold, root / ARM / f"fold{fold}", "calibration=platt",
                      "threshold=validation"))
    return root


def test_the_test_predictions_are_recalibrated_and_the_raw_ones_kept(platt: Path) -> None:
    for fold in range(3):
        run_dir = platt / ARM / f"fold{fold}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        fitted = metrics["calibration"]
        assert fitted["method"] == "platt" and fitted["note"] is None  # a real fit, not the identity
        assert fitted["films"] == metrics["splits"]["val"]["films"] and fitted["a"] != 1.0
        rows = _rows(run_dir / "predictions.csv")
        assert list(rows[0])[:9] == [*PREDICTION_COLUMNS, "prob_raw", "logit_raw"]
        raw = np.array([float(r["logit_raw"]) for r in rows])
        logit, prob = np.array([float(r["logit"]) for r in rows]), np.array([float(r["prob"]) for r in rows])
        assert np.allclose(logit, fitted["a"] * raw + fitted["b"], rtol=0, atol=1e-12)
        assert np.allclose(prob, expit(logit), rtol=0, atol=1e-15)
        assert np.allclose([float(r["prob_raw"]) for r in rows], expit(raw), atol=1e-6)  # the model's own (float32)
        assert [r["pred"] == "1" for r in rows] == list(prob > metrics["threshold"])
        figures = prediction_metrics([int(r["label"]) for r in rows], prob, metrics["threshold"], logits=logit)
        assert figures == pytest.approx({k.removeprefix("test/"): v for k, v in metrics.items()
                                         if k.startswith("test/")}, rel=1e-12)


def test_the_fit_and_the_validation_threshold_use_the_validation_films_recalibrated(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    fits, cuts = [], []
    fit, youden = recalibration_module.fit_recalibration, thresholds_module.youden_threshold

    def fit_spy(method, labels, z):
        fits.append((np.array(labels), np.array(z), fit(method, labels, z)))
        return fits[-1][2]

    def youden_spy(labels, probs):
        cuts.append(np.array(probs))
        return youden(labels, probs)

    monkeypatch.setattr(thresholds_module, "fit_recalibration", fit_spy)
    monkeypatch.setattr(thresholds_module, "youden_threshold", youden_spy)
    manifest = make_noisy_manifest(tmp_path / "cohort")
    metrics = run_fold(_cfg(manifest, tmp_path, 0, tmp_path / "run", "calibration=temperature",
                            "threshold=validation"))
    ((labels, z, fitted),) = fits
    assert len(labels) == metrics["splits"]["val"]["films"] != metrics["splits"]["test"]["films"]
    assert metrics["calibration"] == fitted.record() and fitted.temperature > 0
    assert np.array_equal(cuts[0], expit(z.astype(np.float64) / fitted.temperature))  # Youden on recalibrated P
    assert metrics["threshold"] == metrics["threshold_validation"] == youden(labels, cuts[0])


def test_the_recalibration_is_never_fitted_on_the_test_fold(tmp_path: Path) -> None:
    """The test fold's labels flipped (same films, same folds): the fitted parameters and the validation threshold
    stay exactly the same; only the test figures change."""
    first = make_noisy_manifest(tmp_path / "a")
    before = run_fold(_cfg(first, tmp_path, 0, tmp_path / "run_a", "calibration=platt", "threshold=validation"))
    folds = Path(before["cohort_folder"]).parent / "folds.csv"
    test_patients = {r["patient_id"] for r in _rows(folds) if r["fold"] == "0"}
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    rows = _rows(tmp_path / "b/manifest.csv")
    for row in rows:
        if row["patient_id"] in test_patients:
            row["label"] = "normal" if row["label"] == "pneumoconiosis" else "pneumoconiosis"
    with (tmp_path / "b/manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.copy(folds, tmp_path / "folds.csv")
    after = run_fold(_cfg(tmp_path / "b/manifest.csv", tmp_path, 0, tmp_path / "run_b", "calibration=platt",
                          "threshold=validation", f"data.folds_file={tmp_path / 'folds.csv'}"))
    assert after["calibration"] == before["calibration"]
    assert after["threshold_validation"] == before["threshold_validation"]
    a, b = _rows(tmp_path / "run_a/predictions.csv"), _rows(tmp_path / "run_b/predictions.csv")
    assert [r["prob"] for r in a] == [r["prob"] for r in b] and [r["label"] for r in a] != [r["label"] for r in b]
    assert after["test/brier"] != before["test/brier"]


def test_calibration_none_takes_none_of_the_new_paths(tmp_path: Path, monkeypatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("recalibration used with calibration=none")

    monkeypatch.setattr(thresholds_module, "fit_recalibration", never)
    monkeypatch.setattr(recalibration_module.Recalibration, "apply", never)
    manifest = make_toy_manifest(tmp_path / "cohort", n_patients=18, size=40)
    cfg = _cfg(manifest, tmp_path, 0, tmp_path / "run")
    assert cfg.calibration == "none"
    metrics = run_fold(cfg)
    assert "calibration" not in json.loads((tmp_path / "run/metrics.json").read_text())
    assert list(_rows(tmp_path / "run/predictions.csv")[0]) == list(PREDICTION_COLUMNS)
    with open_dict(cfg):
        del cfg["calibration"]  # the config of before the setting existed: the same hash, so no rerun
    assert config_hash(cfg, metrics["cohort"]) == metrics["config_hash"]


def test_predict_reproduces_the_recalibrated_test_predictions(platt: Path, tmp_path: Path) -> None:
    run_dir = platt / ARM / "fold0"
    rows = _rows(run_dir / "predictions.csv")
    threshold = json.loads((run_dir / "metrics.json").read_text())["threshold"]
    out = tmp_path / "p.csv"
    films = [str(platt / "cohort" / r["image_id"]) for r in rows]
    assert predict_main([str(run_dir), *films, "--out", str(out), "--no-progress"]) == 0
    for row, predicted in zip(rows, _rows(out)):
        assert float(predicted["prob"]) == pytest.approx(float(row["prob"]), abs=1e-5)
        assert float(predicted["logit"]) == pytest.approx(float(row["logit"]), abs=1e-5)
        assert predicted["pred"] == str(int(float(predicted["prob"]) > threshold))


def test_an_export_and_external_validation_apply_each_folds_recalibration(platt: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    assert export_main([str(platt / ARM), "--out", str(export), "--bootstrap", "50"]) == 0
    record = json.loads((export / "export.json").read_text())
    for entry in record["folds"]:
        metrics = json.loads((platt / ARM / f"fold{entry['fold']}/metrics.json").read_text())
        assert entry["calibration"] == metrics["calibration"]
    tested = {r["image_id"]: (fold, float(r["prob"])) for fold in range(3)
              for r in _rows(platt / ARM / f"fold{fold}/predictions.csv")}
    films = [str(platt / "cohort" / image_id) for image_id in tested]
    exported, ensemble = tmp_path / "exported.csv", tmp_path / "ensemble.csv"
    assert predict_main([str(export), *films, "--out", str(exported), "--no-progress"]) == 0
    assert predict_main([str(platt / ARM), *films, "--out", str(ensemble), "--no-progress"]) == 0
    for image_id, row, same in zip(tested, _rows(exported), _rows(ensemble)):
        fold, prob = tested[image_id]
        assert float(row[f"prob_fold{fold}"]) == pytest.approx(prob, abs=1e-5)  # each fold as in its own run
        assert float(row["prob"]) == pytest.approx(float(same["prob"]), abs=1e-6)
    assert "Platt scaling" in (export / "README.md").read_text()
    assert external_main([str(platt / "table"), str(platt / "cohort/manifest.csv"), "--num-folds", "3",
                          "--bootstrap", "50", "--no-progress", "--out", str(tmp_path / "external")]) == 0
    external = {r["image_id"]: float(r["timm_resnet18"]) for r in _rows(tmp_path / "external/predictions.csv")}
    assert len(external) == len(tested)
    for image_id, row in zip(tested, _rows(ensemble)):
        assert external[image_id] == pytest.approx(float(row["prob"]), abs=1e-6)
