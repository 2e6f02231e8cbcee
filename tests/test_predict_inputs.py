"""pneumollm-predict on real use: the shift column against each run's training-film profile (written by the fold
runner, merged for an ensemble, carried by an export; absent for older runs), and consistent input handling
(exit status, encoding note, files named twice, films found by content)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumollm.cli.export import main as export_main
from pneumollm.cli.predict import main as predict_main
from pneumollm.data.film_profile import PROFILE_FILE, merge_profiles, read_profile
from pneumollm.inference.shift import NO_PROFILE
from pneumollm.training.run import run_fold
from tests.helpers import compose_train, make_toy_manifest, pydicom_test_file
from tests.test_predict import BASE

ARM = "study/pneumollm"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three folds of the tiny PneumoLLM on toy 64-px PNG films (as test_predict's): <root>/study/pneumollm/fold<k>."""
    root = tmp_path_factory.mktemp("trained")
    manifest = make_toy_manifest(root / "cohort", n_patients=15, films_per_patient=1, size=64)
    for fold in range(3):
        run_fold(compose_train([*BASE, f"data.source.manifest={manifest}", f"paths.root_dir={root}",
                                f"data.fold={fold}"], run_dir=root / ARM / f"fold{fold}"))
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _films(root: Path, n: int) -> list[Path]:
    return sorted((root / "cohort/films").glob("*.png"))[:n]


def _predict(model: Path, inputs: list, out: Path) -> int:
    return predict_main([str(model), *map(str, inputs), "--out", str(out), "--no-progress"])


def test_each_fold_records_its_training_films(trained: Path) -> None:
    for fold in range(3):
        run_dir = trained / ARM / f"fold{fold}"
        profile = read_profile(run_dir / PROFILE_FILE)
        train = json.loads((run_dir / "metrics.json").read_text())["splits"]["train"]["films"]
        assert profile["films"] == train and profile["image_size"] == 224  # the toy 64-px films, upscaled
        assert profile["formats"] == {"PNG": train} and profile["native"] == {"width": [64, 64], "height": [64, 64]}
        assert profile["crop"] == {"not_cropped": train} and len(profile["intensity"]["histogram"]) == 256


def test_the_shift_column_names_films_unlike_the_training_films(trained: Path, tmp_path: Path, capsys) -> None:
    films = _films(trained, 4)
    pixels = np.asarray(Image.open(films[0]))
    Image.fromarray((pixels * 0.3).astype(np.uint8)).save(tmp_path / "dark.png")
    Image.fromarray(255 - pixels).save(tmp_path / "negative.png")
    out = tmp_path / "p.csv"
    dicom = pydicom_test_file("RG1_UNCI.dcm")
    assert _predict(trained / ARM, [*films, dicom, tmp_path / "dark.png", tmp_path / "negative.png"], out) == 0
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert list(_rows(out)[0])[:7] == ["path", "prob", "logit", "pred", "status", "reason", "shift"]
    assert all(rows[f.name]["shift"] == "" for f in films)
    assert rows[dicom.name]["shift"].split("; ")[:2] == ["native size 1841x1955 px, training films 64x64 px",
                                                         "DICOM file, training films PNG images"]
    assert rows["dark.png"]["shift"].startswith("input intensity far from training films (darker: mean ")
    assert rows["negative.png"]["shift"].startswith("input intensity far from training films (brighter: mean ")
    assert "3 of 7 films look unlike the training films (see the shift column)" in capsys.readouterr().err


def test_the_shift_never_changes_a_prediction_and_older_runs_predict_without_it(trained: Path, tmp_path: Path,
                                                                                capsys) -> None:
    old = tmp_path / "old_fold0"
    shutil.copytree(trained / ARM / "fold0", old)
    (old / PROFILE_FILE).unlink()
    films = [*_films(trained, 3), pydicom_test_file("RG1_UNCI.dcm")]
    assert _predict(trained / ARM / "fold0", films, tmp_path / "new.csv") == 0
    capsys.readouterr()
    assert _predict(old, films, tmp_path / "old.csv") == 0
    err = capsys.readouterr().err
    new_rows, old_rows = _rows(tmp_path / "new.csv"), _rows(tmp_path / "old.csv")
    assert [r["prob"] for r in new_rows] == [r["prob"] for r in old_rows]
    assert new_rows[-1]["shift"] and all(r["shift"] == "" for r in old_rows)
    assert err.count(NO_PROFILE) == 1 and "look unlike" not in err


def test_an_export_carries_the_folds_profile(trained: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    assert export_main([str(trained / ARM), "--out", str(export)]) == 0
    record = json.loads((export / "export.json").read_text())
    folds = [read_profile(trained / ARM / f"fold{k}" / PROFILE_FILE) for k in range(3)]
    assert record["training_films"] == json.loads(json.dumps(merge_profiles(folds)))
    assert "`shift` column" in (export / "README.md").read_text()
    films = [_films(trained, 1)[0], pydicom_test_file("RG1_UNCI.dcm")]
    assert _predict(trained / ARM, films, tmp_path / "arm.csv") == 0
    assert _predict(export, films, tmp_path / "export.csv") == 0
    assert [r["shift"] for r in _rows(tmp_path / "arm.csv")] == [r["shift"] for r in _rows(tmp_path / "export.csv")]


def test_a_finished_run_without_a_profile_gets_one_when_run_again(trained: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "copy"
    shutil.copytree(trained, root)
    run_dir = root / ARM / "fold1"
    before = (run_dir / PROFILE_FILE).read_text()
    (run_dir / PROFILE_FILE).unlink()
    cfg = compose_train([*BASE, f"data.source.manifest={root / 'cohort/manifest.csv'}", f"paths.root_dir={root}",
                         "data.fold=1"], run_dir=run_dir)
    run_fold(cfg)
    assert "skip" in capsys.readouterr().err  # not trained again
    assert json.loads((run_dir / PROFILE_FILE).read_text()) == json.loads(before)


def test_nothing_to_predict_exits_2_and_the_csv_says_why(trained: Path, tmp_path: Path, capsys) -> None:
    header_only = tmp_path / "empty.csv"
    header_only.write_text("path,site\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "film.png").write_bytes(b"not a png")
    cases = [([tmp_path / "missing.png"], "file not found", "no film to predict"),
             ([header_only], "the manifest has no rows", "no film to predict"),
             ([broken], "not a readable image", "none of the 1 input(s) could be predicted")]
    for inputs, reason, message in cases:
        out = tmp_path / "p.csv"
        with pytest.raises(SystemExit) as stop:
            _predict(trained / ARM / "fold0", inputs, out)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert message in err and reason in err
        (row,) = _rows(out)
        assert row["status"] == "skipped" and reason in row["reason"] and row["shift"] == ""


def test_skipped_inputs_are_listed_when_other_films_are_predicted(trained: Path, tmp_path: Path, capsys) -> None:
    assert _predict(trained / ARM / "fold0", [_films(trained, 1)[0], tmp_path / "gone.png"], tmp_path / "p.csv") == 0
    err = capsys.readouterr().err
    assert "1 films predicted, 1 skipped" in err and f"skipped {tmp_path / 'gone.png'}: file not found" in err


def test_a_cp1252_manifest_gets_the_same_note_as_in_prepare(trained: Path, tmp_path: Path, capsys) -> None:
    from pneumollm.data.cohort import read_csv_rows

    film = _films(trained, 1)[0]
    manifest = tmp_path / "films.csv"
    manifest.write_bytes(f"path,site\n{film},Zürich\n".encode("cp1252"))
    out = tmp_path / "p.csv"
    assert _predict(trained / ARM / "fold0", [manifest], out) == 0
    (note,) = read_csv_rows(manifest)[2]
    assert "read as cp1252" in note and note in capsys.readouterr().err
    (row,) = _rows(out)
    assert row["status"] == "ok" and row["site"] == "Zürich"


def test_a_file_named_twice_is_predicted_once(trained: Path, tmp_path: Path, capsys) -> None:
    a, b = _films(trained, 2)
    manifest = tmp_path / "films.csv"
    manifest.write_text(f"path,reader\n{a},1\n{b},1\n{a},2\n")
    out = tmp_path / "p.csv"
    assert _predict(trained / ARM / "fold0", [manifest, b], out) == 0
    rows = _rows(out)
    assert [(r["status"], r["reader"]) for r in rows] == [("ok", "1"), ("ok", "1"), ("skipped", "2"), ("skipped", "")]
    assert rows[2]["reason"] == f"the same file as {a}, listed before (each file is predicted once)"
    assert rows[2]["prob"] == "" and rows[3]["reason"].startswith(f"the same file as {b}")
    assert "2 input(s) name a file listed before" in capsys.readouterr().err


def test_films_in_folders_are_found_by_content(trained: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / ".cache" / "films"  # a hidden folder above the one given does not hide its films
    (folder / ".thumbs").mkdir(parents=True)
    pixels = np.asarray(Image.open(_films(trained, 1)[0]))
    Image.fromarray(pixels).save(folder / "IMG0001", format="JPEG")
    Image.fromarray(pixels).save(folder / "IMG0002", format="PNG")
    Image.fromarray(pixels).save(folder / ".thumbs" / "IMG0001", format="PNG")
    shutil.copy(pydicom_test_file("RG1_UNCI.dcm"), folder / "IMG0003")
    (folder / "notes.txt").write_text("scanned on Monday")
    out = tmp_path / "p.csv"
    assert _predict(trained / ARM / "fold0", [folder], out) == 0
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert set(rows) == {"IMG0001", "IMG0002", "IMG0003"} and {r["status"] for r in rows.values()} == {"ok"}
    assert "1 file(s) left out that are not DICOM, PNG, JPEG, TIFF or BMP films by their content (notes.txt)" in \
        capsys.readouterr().err
