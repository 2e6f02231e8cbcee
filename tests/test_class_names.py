"""Words that fit the user's cohort: ``data.class_names`` in console counts, tables, figure titles, explanations and
the model card; ``size=tiny`` in the titles of the CPU stand-ins' outputs; a warning for folds with few patients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pneumollm.analysis import figures
from pneumollm.cli.aggregate import main as aggregate_main
from pneumollm.cli.export import main as export_main
from pneumollm.cli.predict import main as predict_main
from pneumollm.data.datamodule import small_split_warnings
from pneumollm.data.targets import LabelTask, check_class_names
from pneumollm.errors import ConfigError
from pneumollm.inference import explain
from pneumollm.training.records import config_hash
from pneumollm.training.run import run_fold
from tests.helpers import compose_train, make_toy_manifest

WORDS = "data.class_names=[control,tuberculosis]"
TOY = ["data=manifest", "lungs=none", "trainer=cpu", "logger=none", "data.progress=false", "data.preprocess_workers=1",
       "data.num_folds=3", "data.batch_size=8", "callbacks.progress=null", "trainer.max_epochs=2",
       "model=timm_resnet18", "model.model_name=test_resnet", "data.image_size=64"]


def _tb_manifest(root: Path) -> Path:
    """The toy cohort with its labels written in the cohort's own words (control, tuberculosis)."""
    manifest = make_toy_manifest(root, n_patients=15, films_per_patient=1, size=64)
    text = manifest.read_text().replace(",pneumoconiosis", ",tuberculosis").replace(",normal", ",control")
    manifest.write_text(text)
    return manifest


@pytest.fixture(scope="module")
def tb_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Three folds of a tiny timm arm on a cohort named control/tuberculosis: (<root>/study, the console's text)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("tb")
    manifest = _tb_manifest(root / "cohort")
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        for fold in range(3):
            cfg = compose_train([*TOY, WORDS, f"data.source.manifest={manifest}", f"paths.root_dir={root}",
                                 f"data.fold={fold}"], run_dir=root / "study" / "timm_resnet18" / f"fold{fold}")
            run_fold(cfg)
    return root / "study", printed.getvalue()


def test_the_console_counts_each_class_in_the_cohorts_words(tb_study: tuple[Path, str]) -> None:
    _, printed = tb_study
    assert "8 tuberculosis / 7 control films of 15 patients (8 tuberculosis / 7 control)" in printed
    assert "pneumoconiosis" not in printed and "normal" not in printed
    assert "tuberculosis / " in printed.split("timm_resnet18 fold 0: train")[1].splitlines()[0]


def test_a_fold_with_few_patients_of_a_class_is_warned_about_and_recorded(tb_study: tuple[Path, str]) -> None:
    study, printed = tb_study
    metrics = json.loads((study / "timm_resnet18" / "fold0" / "metrics.json").read_text())
    assert metrics["class_names"] == ["control", "tuberculosis"] and metrics["size"] == "tiny"
    test = metrics["splits"]["test"]
    assert test["patients"] == 5 and any("test patient(s)" in w for w in metrics["warnings"])
    assert any("validation patient(s)" in w for w in metrics["warnings"])
    assert "warning:" in printed and metrics["warnings"][0] in printed


def test_small_split_warnings_name_the_short_class_and_only_it() -> None:
    sizes = {"train": {"patients": 40, "positive_patients": 20}, "val": {"patients": 10, "positive_patients": 5},
             "test": {"patients": 12, "positive_patients": 4}}
    (warning,) = small_split_warnings(sizes, ("control", "tuberculosis"), fold=2)
    assert warning.startswith("fold 2 has only 4 tuberculosis test patient(s)") and "control" not in warning
    assert small_split_warnings({**sizes, "test": {"patients": 10, "positive_patients": 5}}, ("a", "b"), 0) == []
    shared = {"val": {"patients": 3, "positive_patients": 1}, "test": {"patients": 10, "positive_patients": 5}}
    assert small_split_warnings(shared, ("a", "b"), 0, shared=True) == []  # validation = the test fold


def test_class_names_are_checked_and_read_as_label_spellings(tmp_path: Path) -> None:
    for bad in (["tuberculosis"], ["a", "A"], ["", "b"], ["a", "b", "c"]):
        with pytest.raises(ConfigError, match=r"data\.class_names must name"):
            check_class_names(bad)
    task = LabelTask(class_names=("control", "tuberculosis"))
    assert task.parse({"label": "Tuberculosis"}, ["label"], "row 2") == (1, 1)
    assert task.parse({"label": "control"}, ["label"], "row 3") == (0, 0)
    assert task.parse({"label": "normal"}, ["label"], "row 4") == (0, 0)  # the usual words still read


def test_renaming_the_classes_does_not_change_a_runs_config_hash(tmp_path: Path) -> None:
    plain = compose_train([*TOY, "data.source.manifest=x.csv"], run_dir=tmp_path / "a")
    named = compose_train([*TOY, "data.source.manifest=x.csv", WORDS], run_dir=tmp_path / "a")
    assert named.data.class_names == ["control", "tuberculosis"]
    assert config_hash(plain) == config_hash(named)  # finished runs are not redone for new words


def test_tables_titles_and_figures_speak_of_the_cohorts_classes_and_the_tiny_size(
        tb_study: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    study, _ = tb_study
    shown: dict[str, list[str]] = {}
    save = figures._save

    def capture(fig, path):
        texts = [fig._suptitle.get_text()] if fig._suptitle is not None else []
        texts += [ax.get_title() for ax in fig.axes] + [t.get_text() for lg in fig.legends for t in lg.get_texts()]
        shown[Path(path).name] = texts
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", capture)
    assert aggregate_main([str(study), "--num-folds", "3", "--table", "table6", "--bootstrap", "20",
                           "--no-wandb", "--force"]) == 0
    summary = (study / "summary.md").read_text()
    assert summary.splitlines()[0] == ("# Summary: 3-fold cross-validation, size=tiny (CPU stand-ins), "
                                       "tuberculosis vs control")
    assert "Class 1: tuberculosis, class 0: control" in summary and "pneumoconiosis" not in summary
    table = (study / "table.md").read_text()
    assert table.splitlines()[0] == ("# table6: 3-fold cross-validation, size=tiny (CPU stand-ins), "
                                     "tuberculosis vs control")
    assert "Threshold on P(tuberculosis)" in table
    assert "ROC of P(tuberculosis)" in shown["roc.png"][0]
    assert "P(tuberculosis) in % per arm" in shown["films.png"][0]
    assert {"control", "tuberculosis"} <= set(shown["tsne.png"])
    assert figures.film_panel_title("demo", ("control", "tuberculosis")).endswith(
        "P(tuberculosis) in % per arm; red ✗: wrong at the run's threshold (0.5)")


def test_the_model_card_and_the_explanations_use_the_cohorts_words(tb_study: tuple[Path, str], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    study, _ = tb_study
    export = tmp_path / "export"
    assert export_main([str(study / "timm_resnet18"), "--out", str(export)]) == 0
    card = (export / "README.md").read_text()
    assert "into tuberculosis (class 1) and control (class 0)" in card and "P(tuberculosis)" in card
    assert "size=tiny" in card and "pneumoconiosis" not in card.split("## How to use it")[0].lower().replace(
        "pneumollm", "")
    assert json.loads((export / "export.json").read_text())["class_names"] == ["control", "tuberculosis"]
    headings: list[str] = []
    original = explain.explanation_heading
    monkeypatch.setattr(explain, "explanation_heading", lambda *a, **k: headings.append(original(*a, **k)) or
                        headings[-1])
    film = sorted((study.parent / "cohort" / "films").glob("*.png"))[0]
    assert predict_main([str(export), str(film), "--out", str(tmp_path / "p.csv"), "--explain",
                         str(tmp_path / "why"), "--explain-method", "integrated_gradients", "--no-progress"]) == 0
    assert len(headings) == 1 and "P(tuberculosis) = " in headings[0] and film.name in headings[0]
    assert explain.explanation_heading(0.875, "a.png", "tuberculosis") == "a.png: P(tuberculosis) = 87.5 %"
