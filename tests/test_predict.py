"""Using a trained model: predictions on new films reproduce a run's own probabilities (from the run folder,
the fold ensemble and an export), bad inputs become skipped rows, and other base weights are refused."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from pneumollm.cli.export import main as export_main
from pneumollm.cli.predict import main as predict_main
from pneumollm.training.run import run_fold
from tests.helpers import compose_train, make_toy_manifest, pydicom_test_file

BASE = ["data=manifest", "lungs=none", "trainer=cpu", "logger=none", "data.progress=false",
        "data.preprocess_workers=1", "data.num_folds=3", "data.batch_size=8", "callbacks.progress=null",
        "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three folds of the tiny PneumoLLM on a toy cohort: <root>/study/pneumollm/fold<k>."""
    root = tmp_path_factory.mktemp("trained")
    manifest = make_toy_manifest(root / "cohort", n_patients=15, films_per_patient=1, size=64)
    for fold in range(3):
        cfg = compose_train([*BASE, f"data.source.manifest={manifest}", f"paths.root_dir={root}",
                             f"data.fold={fold}"], run_dir=root / "study" / "pneumollm" / f"fold{fold}")
        run_fold(cfg)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _test_films(run_dir: Path, cohort: Path) -> tuple[list[str], dict[str, float]]:
    rows = _rows(run_dir / "predictions.csv")
    return [str(cohort / r["image_id"]) for r in rows], {str(cohort / r["image_id"]): float(r["prob"]) for r in rows}


def test_a_run_folder_reproduces_its_own_test_probabilities(trained: Path, tmp_path: Path) -> None:
    files, expected = _test_films(trained / "study/pneumollm/fold0", trained / "cohort")
    out = tmp_path / "p.csv"
    assert predict_main([str(trained / "study/pneumollm/fold0"), *files, "--out", str(out), "--no-progress"]) == 0
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok"] * len(files)
    for row in rows:
        assert float(row["prob"]) == pytest.approx(expected[str(Path(row["path"]))], abs=1e-5)
        assert row["pred"] == str(int(float(row["prob"]) > 0.5))


def test_the_arm_folder_is_the_mean_of_its_folds_and_an_export_gives_the_same(trained: Path, tmp_path: Path) -> None:
    films = sorted(str(p) for p in (trained / "cohort/films").glob("*.png"))[:6]
    ensemble = tmp_path / "ensemble.csv"
    assert predict_main([str(trained / "study/pneumollm"), *films, "--out", str(ensemble), "--no-progress"]) == 0
    rows = _rows(ensemble)
    folds = [[float(r[f"prob_fold{k}"]) for k in range(3)] for r in rows]
    assert all(float(r["prob"]) == pytest.approx(sum(f) / 3, abs=2e-6) for r, f in zip(rows, folds))
    assert all(float(r["prob_std"]) >= 0 for r in rows)
    export = tmp_path / "export"
    assert export_main([str(trained / "study/pneumollm"), "--out", str(export)]) == 0
    assert {p.name for p in export.iterdir()} >= {"export.json", "README.md", "fold0.safetensors", "fold2.yaml"}
    assert "How to use it" in (export / "README.md").read_text()
    exported = tmp_path / "exported.csv"
    assert predict_main([str(export), *films, "--out", str(exported), "--no-progress"]) == 0
    for a, b in zip(rows, _rows(exported)):
        assert float(a["prob"]) == pytest.approx(float(b["prob"]), abs=1e-5)


def test_an_export_refuses_other_base_weights(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    export = tmp_path / "export"
    assert export_main([str(trained / "study/pneumollm"), "--out", str(export)]) == 0
    film = next((trained / "cohort/films").glob("*.png"))
    with pytest.raises(SystemExit) as stop:
        predict_main([str(export), str(film), "--out", str(tmp_path / "x.csv"), "--set", "model.llm.init_seed=7"])
    assert stop.value.code == 2
    assert "base weights differ from the ones recorded" in capsys.readouterr().err


def test_bad_inputs_become_skipped_rows_with_reasons(trained: Path, tmp_path: Path) -> None:
    films = tmp_path / "films"
    films.mkdir()
    good = next((trained / "cohort/films").glob("*.png"))
    shutil.copy(good, films / "good.png")
    (films / "corrupt.dcm").write_bytes(b"garbage, not a DICOM file")
    (films / "empty.png").write_bytes(b"")
    ct = pydicom_test_file("CT_small.dcm")
    shutil.copy(ct, films / "ct.dcm")
    out = tmp_path / "p.csv"
    assert predict_main([str(trained / "study/pneumollm/fold0"), str(films), str(tmp_path / "gone.png"), "--out",
                         str(out), "--no-progress"]) == 0
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert rows["good.png"]["status"] == "ok"
    assert rows["empty.png"]["reason"] == "file is empty (0 bytes)"
    assert "not a readable DICOM" in rows["corrupt.dcm"]["reason"]
    assert "modality CT is not a radiograph" in rows["ct.dcm"]["reason"]
    assert rows["gone.png"]["reason"] == "file not found" and rows["gone.png"]["prob"] == ""


def test_a_folder_without_films_is_a_clear_error(trained: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("nothing here")
    with pytest.raises(SystemExit) as stop:
        predict_main([str(trained / "study/pneumollm/fold0"), str(tmp_path / "notes"), "--out", str(tmp_path / "x")])
    assert stop.value.code == 2 and "no films in this folder" in capsys.readouterr().err


def test_the_real_dicom_film_is_predicted(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "rg1.csv"
    film = pydicom_test_file("RG1_UNCI.dcm")
    assert predict_main([str(trained / "study/pneumollm"), str(film), "--out", str(out), "--no-progress"]) == 0
    (row,) = _rows(out)
    assert row["status"] == "ok" and 0.0 <= float(row["prob"]) <= 1.0


@pytest.mark.parametrize(("model", "method"), [("pneumollm/fold0", "occlusion"),
                                               ("pneumollm", "integrated_gradients")], ids=["fold", "ensemble"])
def test_explanations_are_written_for_the_predicted_films(trained: Path, tmp_path: Path, model: str,
                                                          method: str) -> None:
    from PIL import Image

    films = sorted(str(p) for p in (trained / "cohort/films").glob("*.png"))[:2]
    explain = tmp_path / "explain"
    out = tmp_path / "p.csv"
    args = [str(trained / "study" / model), *films, str(tmp_path / "missing.png"), "--out", str(out),
            "--explain", str(explain), "--explain-method", method, "--no-progress"]
    assert predict_main(args) == 0
    index = _rows(explain / "explanations.csv")
    assert [r["path"] for r in index] == films  # the skipped film has no explanation
    assert [r["status"] for r in index] == ["ok", "ok"]
    predicted = {r["path"]: r["prob"] for r in _rows(out)}
    for row in index:
        assert row["prob"] == predicted[row["path"]]
        with Image.open(explain / row["explanation"]) as png:
            assert png.format == "PNG" and png.size == (1300, 460)
    assert len({r["explanation"] for r in index}) == 2


def test_the_ensemble_is_explained_through_its_mean_probability(trained: Path) -> None:
    import torch

    from pneumollm.inference.explain_films import EnsembleLogits, explanation_name
    from pneumollm.inference.models import load_trained

    model = load_trained(trained / "study/pneumollm")
    images = torch.rand(3, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean = torch.stack([f.probabilities(images) for f in model.folds]).mean(0)
        logits = EnsembleLogits(model)(images)
    torch.testing.assert_close(logits.softmax(-1)[:, 1], mean, atol=1e-6, rtol=0)
    taken: set[str] = set()
    names = ("a/b.dcm", "a_b.png", "../x y.JPG", "", "/data/site 1/P0001/1.dcm")
    assert [explanation_name(n, taken) for n in names] == ["a_b.png", "a_b_2.png", "x_y.png", "film.png",
                                                            "P0001_1.png"]


def _as_written_before_plans(run_dir: Path, legacy_only: bool) -> None:
    """Make a run folder what the suite wrote before preprocessing plans: no preprocessing.json, and checkpoints
    holding one fingerprint of all frozen weights (``frozen_fingerprint``) beside the per-tensor ones, or (older
    still) instead of them."""
    import torch

    from pneumollm.inference.models import load_trained
    from pneumollm.training.module import frozen_fingerprint

    net = load_trained(run_dir, fold_adapters=False).folds[0].net
    (run_dir / "preprocessing.json").unlink()
    for checkpoint in (run_dir / "checkpoints").glob("*.ckpt"):
        state = torch.load(checkpoint, weights_only=True)
        state["frozen_fingerprint"] = frozen_fingerprint(net)
        if legacy_only:
            del state["frozen_fingerprints"]
        torch.save(state, checkpoint)


def test_run_folders_written_before_preprocessing_plans_work_as_before(trained: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    import json

    from pneumollm.cli.aggregate import main as aggregate_main
    from pneumollm.inference.external import external_validation

    arm = tmp_path / "study" / "pneumollm"
    shutil.copytree(trained / "study", tmp_path / "study")
    for fold in range(3):
        _as_written_before_plans(arm / f"fold{fold}", legacy_only=fold == 1)
    films = sorted(str(p) for p in (trained / "cohort/films").glob("*.png"))[:4]
    new, old = tmp_path / "new.csv", tmp_path / "old.csv"
    assert predict_main([str(trained / "study/pneumollm"), *films, "--out", str(new), "--no-progress"]) == 0
    assert predict_main([str(arm), *films, "--out", str(old), "--no-progress"]) == 0
    assert [r["prob"] for r in _rows(old)] == [r["prob"] for r in _rows(new)]
    assert export_main([str(trained / "study/pneumollm"), "--out", str(tmp_path / "new_export")]) == 0
    assert export_main([str(arm), "--out", str(tmp_path / "old_export")]) == 0
    records = [json.loads((tmp_path / name / "export.json").read_text()) for name in ("new_export", "old_export")]
    assert records[0]["preprocessing"] == records[1]["preprocessing"]
    assert aggregate_main([str(tmp_path / "study"), "--num-folds", "3"]) == 0
    (external,) = external_validation(tmp_path / "study", trained / "cohort/manifest.csv", tmp_path / "external",
                                      n_boot=20, num_folds=3, progress=False)
    assert (external / "table.csv").is_file()
    stamp = (arm / "fold0/metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    run_fold(compose_train([*BASE, f"data.source.manifest={trained / 'cohort/manifest.csv'}",
                            f"paths.root_dir={trained}", "data.fold=0"], run_dir=arm / "fold0"))
    assert "skip" in capsys.readouterr().err and (arm / "fold0/metrics.json").stat().st_mtime_ns == stamp


def test_inference_prepares_films_with_the_recorded_plan(trained: Path, tmp_path: Path) -> None:
    import json

    from omegaconf import OmegaConf

    from pneumollm.data.preprocess_plan import preprocess_settings_from_config, read_plan
    from pneumollm.inference.models import load_trained

    run = trained / "study/pneumollm/fold0"
    recorded = read_plan(run / "preprocessing.json")
    assert recorded == preprocess_settings_from_config(OmegaConf.load(run / "config.yaml").data)
    assert load_trained(run).settings == recorded
    edited = tmp_path / "fold0"
    shutil.copytree(run, edited)
    plan = json.loads((edited / "preprocessing.json").read_text())
    (edited / "preprocessing.json").write_text(json.dumps({**plan, "image_size": 48}))
    assert load_trained(edited).settings.image_size == 48  # read from the plan, not rebuilt from config.yaml
    overridden = load_trained(edited, overrides=["data.image_size=40"]).settings  # --set data.*: the config's
    assert overridden.image_size == 40 and overridden.lungs == recorded.lungs
