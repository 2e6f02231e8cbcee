"""External validation: every arm of a finished study as its folds' ensemble on another cohort, with intervals and
the paired difference to the reference arm."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pneumollm.analysis.stats import paired_bootstrap_difference
from pneumollm.cli.external import main as external_main
from pneumollm.training.run import run_fold
from tests.helpers import compose_train, make_toy_manifest
from tests.test_predict import BASE


def test_the_paired_difference_of_an_arm_with_itself_is_zero_and_a_better_arm_wins() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 80)
    good = np.clip(labels * 0.6 + rng.normal(0.2, 0.2, 80), 0, 1)
    poor = rng.random(80)
    patients = [f"p{i // 2}" for i in range(80)]
    same_auc, same_avg = paired_bootstrap_difference(labels, good, good, patients, n_boot=200)
    assert same_auc.estimate == same_auc.low == same_auc.high == 0 and same_avg.estimate == 0
    better, _ = paired_bootstrap_difference(labels, good, poor, patients, n_boot=200)
    assert better.low > 0 and better.low < better.estimate < better.high


def test_every_arm_is_scored_on_the_external_cohort(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = make_toy_manifest(tmp_path / "cohort", n_patients=15, films_per_patient=1, size=64)
    for arm in ("baseline", "pneumollm"):
        for fold in range(3):
            extra = [f"arm={arm}"] if arm != "pneumollm" else []
            cfg = compose_train([*BASE, f"data.source.manifest={manifest}", f"paths.root_dir={tmp_path}",
                                 f"data.fold={fold}", "experiment.reference=baseline", *extra],
                                run_dir=tmp_path / "table" / "study" / "runs" / arm / f"fold{fold}")
            run_fold(cfg)
    external = make_toy_manifest(tmp_path / "other_site", n_patients=12, films_per_patient=2, size=64, seed=5)
    assert external_main([str(tmp_path / "table"), str(external), "--num-folds", "3", "--bootstrap", "100",
                          "--no-progress"]) == 0
    (folder,) = (tmp_path / "table" / "study" / "external").iterdir()
    with (folder / "table.csv").open() as handle:
        rows = {r["arm"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"baseline", "pneumollm"} and rows["pneumollm"]["films"] == "24"
    for row in rows.values():
        assert float(row["pooled_auc_ci_low"]) <= float(row["auc"]) <= float(row["pooled_auc_ci_high"])
    assert rows["baseline"]["delta_auc"] == ""  # the reference
    assert float(rows["pneumollm"]["delta_auc_ci_low"]) <= float(rows["pneumollm"]["delta_auc"])
    assert (folder / "roc.png").is_file() and (folder / "table.md").read_text().count(" ref ") == 2
    for row in rows.values():  # each arm's calibration on the external films, with its patient-bootstrap interval
        for metric in ("brier", "ece", "calibration_intercept"):
            assert float(row[f"{metric}_ci_low"]) <= float(row[metric]) <= float(row[f"{metric}_ci_high"]), metric
        assert 0 <= float(row["ece"]) <= 1 and 0 <= float(row["brier"]) <= 1
    assert "## Calibration" in (folder / "table.md").read_text()
    assert (folder / "calibration.png").is_file() and (folder / "decision_curve.png").is_file()
    with (folder / "decision_curve.csv").open() as handle:
        curve = list(csv.DictReader(handle))
    assert len(curve) == 99 and list(curve[0]) == ["threshold", "treat_none", "treat_all", "baseline", "pneumollm"]
    with (folder / "predictions.csv").open() as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 24 and all(r["shift"] == "" for r in predictions)  # films like the training films
    err = capsys.readouterr().err
    assert "external validation" in err and "0 of 24 films look unlike the training films" in err


def test_external_films_unlike_the_training_films_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    manifest = make_toy_manifest(tmp_path / "cohort", n_patients=15, films_per_patient=1, size=64)
    for fold in range(3):
        run_fold(compose_train([*BASE, f"data.source.manifest={manifest}", f"paths.root_dir={tmp_path}",
                                f"data.fold={fold}"], run_dir=tmp_path / "table" / "study" / "runs" / "pneumollm" /
                               f"fold{fold}"))
    external = make_toy_manifest(tmp_path / "dark_site", n_patients=8, films_per_patient=1, size=64, seed=5)
    darkened = sorted((tmp_path / "dark_site" / "films").glob("*.png"))[:3]
    for path in darkened:  # under-exposed films at the other site
        Image.fromarray((np.asarray(Image.open(path)) * 0.3).astype(np.uint8)).save(path)
    assert external_main([str(tmp_path / "table"), str(external), "--num-folds", "3", "--bootstrap", "50",
                          "--no-progress"]) == 0
    (folder,) = (tmp_path / "table" / "study" / "external").iterdir()
    with (folder / "predictions.csv").open() as handle:
        shift = {r["image_id"]: r["shift"] for r in csv.DictReader(handle)}
    dark = {f"films/{p.name}" for p in darkened}
    assert all(shift[i].startswith("input intensity far from training films (darker") for i in dark)
    assert all(shift[i] == "" for i in shift if i not in dark)
    assert "3 of 8 films look unlike the training films (see the shift column)" in capsys.readouterr().err


def test_a_study_root_scores_every_complete_cohort_and_names_the_others(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    manifest = make_toy_manifest(tmp_path / "cohort", n_patients=15, films_per_patient=1, size=64)
    for fold in range(3):
        run_fold(compose_train([*BASE, f"data.source.manifest={manifest}", f"paths.root_dir={tmp_path}",
                                f"data.fold={fold}", "trainer.max_epochs=1"],
                               run_dir=tmp_path / "table" / "good" / "runs" / "pneumollm" / f"fold{fold}"))
    failed = tmp_path / "table" / "broken" / "runs" / "pneumollm" / "fold0"
    failed.mkdir(parents=True)  # another cohort under the same root whose only attempt failed
    (failed / "failed.json").write_text(json.dumps({"arm": "pneumollm", "fold": 0, "config_hash": None,
                                                    "error": "no usable film"}))
    external = make_toy_manifest(tmp_path / "other_site", n_patients=8, size=64, seed=5)
    assert external_main([str(tmp_path / "table"), str(external), "--num-folds", "3", "--bootstrap", "50",
                          "--no-progress"]) == 0
    assert len(list((tmp_path / "table" / "good" / "external").iterdir())) == 1
    assert not (tmp_path / "table" / "broken" / "external").exists()
    err = capsys.readouterr().err
    assert f"study {tmp_path / 'table' / 'broken'} left out: no arm has all 3 folds" in err
    assert "fold 0 is missing (failed: no usable film" in err
