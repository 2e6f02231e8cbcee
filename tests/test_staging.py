"""Staged (multi-class ILO profusion) and multi-label (co-finding) cohorts: labels, folds, losses, metrics and
tables, end to end on toy cohorts."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumollm.data.cohort import CohortError, read_manifest
from pneumollm.data.folds import FoldError, make_folds, split_fold
from pneumollm.data.targets import LabelTask, parse_flag, parse_stage
from pneumollm.errors import ConfigError
from tests.helpers import compose_train, make_staged_manifest

STAGES = LabelTask(task="multiclass")
FINDINGS = LabelTask(task="multilabel", label_columns=("pneumoconiosis", "tb", "emphysema"))


# ---- labels ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "stage"), [
    ("0", 0), ("1", 1), ("2", 2), ("3", 3), ("2.0", 2), ("I", 1), ("ii", 2), ("III", 3), ("stage II", 2),
    ("Stage 3", 3), ("category 1", 1), ("0/-", 0), ("0/0", 0), ("0/1", 0), ("1/0", 1), ("1/2", 1), ("2/1", 2),
    ("2/3", 2), ("3/2", 3), ("3/+", 3), ("normal", 0), ("Negative", 0),
])
def test_every_stage_spelling_reads_as_its_major_category(text: str, stage: int) -> None:
    assert parse_stage(text, STAGES.classes, {}, "x") == stage


def test_class_names_and_the_label_map_are_read_too() -> None:
    classes = ("none", "mild", "severe")
    assert parse_stage("Mild", classes, {}, "x") == 1
    assert parse_stage("0+", STAGES.classes, {"0+": 0}, "x") == 0
    assert parse_stage("PMF", STAGES.classes, {"pmf": "3"}, "x") == 3
    assert parse_stage("", STAGES.classes, {}, "x") is None and parse_stage("NaN", STAGES.classes, {}, "x") is None


@pytest.mark.parametrize(("text", "why"), [
    ("4", "outside data.classes"), ("IV", "outside data.classes"), ("2/4", "not an ILO category"),
    ("0/+", "not an ILO category"), ("silicosis", "is not a stage"),
])
def test_a_bad_stage_names_the_file_row_and_column(tmp_path: Path, text: str, why: str) -> None:
    manifest = make_staged_manifest(tmp_path, patients_per_stage=1)
    lines = manifest.read_text().splitlines()
    lines[3] = lines[3].replace(",II,", f",{text},")
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(CohortError, match=rf"manifest.csv row 4, column 'label': .*{why}"):
        read_manifest(manifest, task=STAGES)


def test_findings_are_read_as_bits_and_a_bad_flag_names_its_column(tmp_path: Path) -> None:
    manifest = make_staged_manifest(tmp_path, patients_per_stage=1)
    records = read_manifest(manifest, task=FINDINGS).records
    assert [FINDINGS.multi_hot(r.target) for r in records[:3]] == [[0, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert [r.label for r in records] == [0, 1, 1, 1]  # the primary finding is "any pneumoconiosis"
    assert parse_flag("yes", "x") == 1 and parse_flag("absent", "x") == 0 and parse_flag(" ", "x") is None
    manifest.write_text(manifest.read_text().replace("films/p002.png,P002,II,1,1,0", "films/p002.png,P002,II,1,?,0"))
    with pytest.raises(CohortError, match=r"manifest.csv row 4, column 'tb': '\?' is not 0/1"):
        read_manifest(manifest, task=FINDINGS)


def test_a_missing_finding_column_or_an_empty_finding_is_reported(tmp_path: Path) -> None:
    manifest = make_staged_manifest(tmp_path, patients_per_stage=1)
    with pytest.raises(CohortError, match=r"missing finding column\(s\) effusion"):
        read_manifest(manifest, task=LabelTask(task="multilabel", label_columns=("pneumoconiosis", "effusion")))
    manifest.write_text(manifest.read_text().replace("films/p001.png,P001,I,1,0,0", "films/p001.png,P001,I,1,,0"))
    listing = read_manifest(manifest, task=FINDINGS)
    assert [s.reason for s in listing.skipped] == ["missing value of finding 'tb'"] and len(listing.records) == 3


def test_the_stages_any_label_is_stage_one_or_more(tmp_path: Path) -> None:
    records = read_manifest(make_staged_manifest(tmp_path, patients_per_stage=2), task=STAGES).records
    assert [(r.target, r.label) for r in records[:4]] == [(0, 0), (1, 1), (2, 1), (3, 1)]


def test_a_task_without_what_it_needs_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"data\.label_columns"):
        LabelTask(task="multilabel")
    with pytest.raises(ConfigError, match="binary, multiclass, multilabel"):
        LabelTask(task="ordinal")


# ---- folds -----------------------------------------------------------------------------------------------------


def test_every_fold_holds_every_stage_and_validation_is_stratified_too() -> None:
    pairs = [(f"P{i:03d}", i % 4) for i in range(60)]
    assignment = make_folds(pairs, num_folds=5, seed=0, task=STAGES)
    for fold in range(5):
        stages = Counter(s for p, s in pairs if assignment[p] == fold)
        assert sorted(stages) == [0, 1, 2, 3] and set(stages.values()) == {3}
        split = split_fold(assignment, dict(pairs), fold, 0.25, seed=0, task=STAGES)
        assert {dict(pairs)[p] for p in split.val} == {0, 1, 2, 3}
        assert not split.val & split.test and not split.train & split.test


def test_a_stage_with_fewer_patients_than_folds_is_a_clear_error() -> None:
    pairs = [(f"P{i:03d}", i % 3) for i in range(30)] + [("Q1", 3), ("Q2", 3)]
    with pytest.raises(FoldError, match=r"too few patients of stage\(s\) 3: 2 for 5-fold"):
        make_folds(pairs, num_folds=5, task=STAGES)


def test_a_patient_takes_their_highest_stage_and_never_crosses_folds() -> None:
    pairs = [(f"P{i:03d}", i % 4) for i in range(40)] + [("P000", 3), ("P001", 2)]  # two patients with two films
    assignment = make_folds(pairs, num_folds=5, task=STAGES)
    assert set(assignment) == {p for p, _ in pairs}


def test_finding_combinations_are_balanced_and_rare_ones_merged() -> None:
    pairs = [(f"P{i:03d}", (i % 2) | (int(i % 3 == 0) << 1)) for i in range(40)] + [("R1", 0b111), ("R2", 0b101)]
    task = LabelTask(task="multilabel", label_columns=("pneumoconiosis", "tb", "pmf"))
    with pytest.raises(FoldError, match=r"pmf present in 2, absent in 40"):
        make_folds(pairs, num_folds=5, task=task)
    task = LabelTask(task="multilabel", label_columns=("pneumoconiosis", "tb"))
    assignment = make_folds([(p, t & 0b11) for p, t in pairs], num_folds=5, task=task)
    for fold in range(5):
        members = [t & 0b11 for p, t in pairs if assignment[p] == fold]
        for bit in (0, 1):
            assert 0 < sum((t >> bit) & 1 for t in members) < len(members)


# ---- loss and outputs ------------------------------------------------------------------------------------------


def test_the_task_picks_the_loss_and_sizes_every_head(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from pneumollm.training.losses import CrossEntropyLoss, MultiLabelBCELoss, OneHotBCELoss

    expected = {"binary": (OneHotBCELoss, 2), "multiclass": (CrossEntropyLoss, 4),
                "multilabel": (MultiLabelBCELoss, 3)}
    for task, (loss_type, outputs) in expected.items():
        extra = ["data.label_columns=[pneumoconiosis,tb,emphysema]"] if task == "multilabel" else []
        cfg = compose_train([f"data.task={task}", *extra], run_dir=tmp_path)
        assert isinstance(instantiate(cfg.loss), loss_type) and cfg.data.num_outputs == outputs
        for model in ("pneumollm", "timm_resnet18", "tiny_clip_coop"):
            cfg = compose_train([f"data.task={task}", f"model={model}", *extra], run_dir=tmp_path)
            net = instantiate(cfg.model, _convert_="object")
            assert net(torch.rand(2, 1, 224, 224)).shape == (2, outputs), model


@pytest.mark.parametrize(("task", "loss"), [("multiclass", "bce_multilabel"), ("multilabel", "ce"),
                                            ("multilabel", "bce2")])
def test_a_loss_that_cannot_train_the_task_is_refused(task: str, loss: str) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pneumollm.config import register_resolvers
    from pneumollm.paths import conf_dir
    from pneumollm.training.losses import check_loss_for_task

    register_resolvers()
    node = OmegaConf.load(Path(conf_dir()) / "loss" / f"{loss}.yaml")
    cfg = OmegaConf.create({"data": {"task": task, "num_outputs": 3}, "loss": node})
    with pytest.raises(ConfigError, match=rf"loss={loss} cannot train data.task={task}"):
        check_loss_for_task(instantiate(cfg.loss), task, loss)


def test_p_any_is_the_sum_of_the_stage_probabilities_and_its_log_odds_are_exact() -> None:
    from pneumollm.inference.explain import log_probabilities
    from pneumollm.training.losses import CrossEntropyLoss, MultiLabelBCELoss, OneHotBCELoss

    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    loss = CrossEntropyLoss()
    p = loss.positive_probability(logits)
    torch.testing.assert_close(p, 1 - logits.softmax(-1)[:, 0])
    log_p, log_q = log_probabilities(loss, logits)
    torch.testing.assert_close(log_p.exp(), p)
    torch.testing.assert_close(log_q.exp(), 1 - p)
    two = torch.randn(6, 2)
    assert torch.equal(OneHotBCELoss().positive_probability(two), two.softmax(-1)[:, 1])  # binary: unchanged
    primary = MultiLabelBCELoss(positive_index=0)
    torch.testing.assert_close(primary.positive_probability(logits), logits[:, 0].sigmoid())


# ---- metrics ---------------------------------------------------------------------------------------------------


def _fixed_stages(n: int = 80, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    logits = rng.normal(size=(n, 4)) + 1.5 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def test_fold_metrics_equal_scikit_learn_on_fixed_inputs() -> None:
    from sklearn.metrics import accuracy_score, cohen_kappa_score, recall_score, roc_auc_score

    from pneumollm.training.prediction_metrics import prediction_metrics, stage_confusion

    y, probs = _fixed_stages()
    got = prediction_metrics((y >= 1).astype(int), 1 - probs[:, 0], 0.5, STAGES, y, probs)
    called = probs.argmax(axis=1)
    assert got["stage_accuracy"] == pytest.approx(accuracy_score(y, called) * 100, abs=1e-4)
    assert got["macro_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr") * 100, abs=1e-3)
    assert got["kappa"] == pytest.approx(cohen_kappa_score(y, called, weights="quadratic"), abs=1e-5)
    recalls = recall_score(y, called, average=None) * 100
    for c, value in zip(STAGES.classes, recalls):
        assert got[f"sensitivity_stage_{c}"] == pytest.approx(value, abs=1e-4)
    specificity_1 = ((called != 1) & (y != 1)).sum() / (y != 1).sum() * 100
    assert got["specificity_stage_1"] == pytest.approx(specificity_1, abs=1e-4)
    assert got["auc"] == pytest.approx(roc_auc_score(y >= 1, 1 - probs[:, 0]) * 100, abs=1e-9)
    assert np.array(stage_confusion(STAGES, y, probs)).sum() == len(y)


def test_pooled_figures_and_their_fast_resample_form_equal_scikit_learn() -> None:
    from sklearn.metrics import roc_auc_score

    from pneumollm.analysis.task_summary import pooled_figures, resample_figures

    y, probs = _fixed_stages()
    exact, fast = pooled_figures(STAGES, y, probs), resample_figures(STAGES, y, probs)
    assert exact.keys() == fast.keys()
    for key in exact:
        assert fast[key] == pytest.approx(exact[key], abs=1e-9), key
    rng = np.random.default_rng(1)
    truth = (rng.random((60, 3)) < 0.4).astype(int)
    scores = np.clip(truth * 0.3 + rng.random((60, 3)) * 0.7, 0, 1)
    exact, fast = pooled_figures(FINDINGS, truth, scores), resample_figures(FINDINGS, truth, scores)
    for key in exact:
        assert fast[key] == pytest.approx(exact[key], abs=1e-9), key
    assert exact["micro_auc"] == pytest.approx(roc_auc_score(truth, scores, average="micro") * 100)
    assert exact["auc_tb"] == pytest.approx(roc_auc_score(truth[:, 1], scores[:, 1]) * 100)


def test_kappa_is_one_on_perfect_ordinal_calls_and_penalises_distant_errors_more() -> None:
    from pneumollm.analysis.task_summary import pooled_figures

    y = np.arange(40) % 4
    perfect = np.eye(4)[y] * 0.9 + 0.025
    assert pooled_figures(STAGES, y, perfect)["kappa"] == pytest.approx(1.0)
    near, far = y.copy(), y.copy()
    near[y == 2], far[y == 2] = 1, 0  # stage 2 called one stage off, or two stages off
    assert pooled_figures(STAGES, y, np.eye(4)[near])["kappa"] > pooled_figures(STAGES, y, np.eye(4)[far])["kappa"]


def test_the_derived_binary_metrics_equal_the_binary_computation_on_the_same_probabilities() -> None:
    from pneumollm.training.losses import CrossEntropyLoss
    from pneumollm.training.module import paper_metrics

    y, probs = _fixed_stages()
    logits = torch.tensor(np.log(probs), dtype=torch.float32)
    p_any = CrossEntropyLoss().positive_probability(logits)
    staged, binary = paper_metrics(), paper_metrics()
    staged.update(p_any, torch.tensor((y >= 1).astype(int)))
    binary.update(torch.tensor(1 - probs[:, 0], dtype=torch.float32), torch.tensor((y >= 1).astype(int)))
    for key, value in staged.compute().items():
        assert float(value) == pytest.approx(float(binary.compute()[key]), abs=1e-6), key


# ---- end to end ------------------------------------------------------------------------------------------------


TOY = ["data=manifest", "lungs=none", "data.progress=false", "data.preprocess_workers=1",
       "data.min_film_size=16", "data.num_folds=2", "data.val_fraction=0.25", "data.batch_size=8",
       "trainer=cpu", "logger=csv", "callbacks.progress=null", "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def staged_manifest(toy_cohort) -> Path:
    return toy_cohort(staged=True, patients_per_stage=6)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_staged_fold_writes_stage_columns_and_metrics_in_a_folder_of_its_own(staged_manifest: Path,
                                                                               tmp_path: Path) -> None:
    from pneumollm.training.run import run_fold

    common = [*TOY, f"data.source.manifest={staged_manifest}", f"paths.root_dir={tmp_path}"]
    staged = compose_train([*common, "data.task=multiclass"], run_dir=tmp_path / "staged")
    binary = compose_train([*common, "data.label_map={i: 1, ii: 1, iii: 1}"], run_dir=tmp_path / "binary")
    assert staged.data.cohort == f"{binary.data.cohort}-multiclass"
    assert staged.data.prepared_dir != binary.data.prepared_dir
    metrics = run_fold(staged)
    assert metrics["task"] == "multiclass" and metrics["classes"] == ["0", "1", "2", "3"]
    assert np.array(metrics["test/confusion"]).sum() == metrics["splits"]["test"]["films"]
    for key in ("test/stage_accuracy", "test/macro_auc", "test/kappa", "test/sensitivity_stage_3", "test/auc"):
        assert np.isfinite(metrics[key]), key
    rows = _rows(tmp_path / "staged" / "predictions.csv")
    assert list(rows[0])[:13] == ["image_id", "patient_id", "fold", "label", "prob", "logit", "pred", "stage",
                                  "pred_stage", "prob_stage_0", "prob_stage_1", "prob_stage_2", "prob_stage_3"]
    for row in rows:
        stages = [float(row[f"prob_stage_{c}"]) for c in "0123"]
        assert sum(stages) == pytest.approx(1.0, abs=1e-5)
        assert float(row["prob"]) == pytest.approx(sum(stages[1:]), abs=2e-6)
        assert row["label"] == str(int(row["stage"] != "0"))
    binary_metrics = run_fold(binary)  # the same films as a binary cohort: its own folds and results
    assert binary_metrics["task"] == "binary" and "test/kappa" not in binary_metrics
    assert binary_metrics["cohort"]["folds"] != metrics["cohort"]["folds"] or \
        binary_metrics["cohort"]["films"] != metrics["cohort"]["films"]


def test_a_multilabel_fold_writes_each_findings_columns(staged_manifest: Path, tmp_path: Path) -> None:
    from pneumollm.training.run import run_fold

    cfg = compose_train([*TOY, f"data.source.manifest={staged_manifest}", f"paths.root_dir={tmp_path}",
                         "data.task=multilabel", "data.label_columns=[pneumoconiosis,tb,emphysema]"],
                        run_dir=tmp_path / "run")
    metrics = run_fold(cfg)
    assert metrics["classes"] == ["pneumoconiosis", "tb", "emphysema"]
    for key in ("test/macro_auc", "test/micro_auc", "test/auc_tb", "test/sensitivity_emphysema"):
        assert key in metrics, key
    row = _rows(tmp_path / "run" / "predictions.csv")[0]
    assert {"true_tb", "prob_tb", "pred_tb", "true_emphysema"} <= set(row)
    assert float(row["prob"]) == pytest.approx(float(row["prob_pneumoconiosis"]), abs=1e-6)


def test_the_staged_demo_and_table6_sweeps_run_and_their_tables_show_the_stages(staged_manifest: Path,
                                                                              tmp_path: Path,
                                                                              tiny_cache_one_thread) -> None:
    from pneumollm.analysis.collect import collect_runs, find_studies
    from pneumollm.analysis.report import aggregate_table
    from pneumollm.analysis.summary import summarise_arm, write_summary
    from tests.test_sweeps import _arms, _run_sweep_in_process

    extra = ["data.task=multiclass", "data.val_fraction=0.25", "data.batch_size=8"]
    demo_jobs = [[*extra, f"data.fold={f}"] for f in (0, 1)]
    _run_sweep_in_process("demo", tmp_path, staged_manifest, demo_jobs)
    table_jobs = [[*extra, f"arm={a}", f"data.fold={f}"] for a in _arms("table6") for f in (0, 1)]
    _run_sweep_in_process("table6", tmp_path, staged_manifest, table_jobs)
    assert not list(tmp_path.rglob("failed.json"))
    (demo_study,) = find_studies(tmp_path / "outputs" / "demo")
    assert demo_study.name.endswith("-multiclass")
    summaries = [summarise_arm(a, n_boot=50) for a in collect_runs(demo_study).values()]
    _, md = write_summary(summaries, tmp_path / "summary")
    assert "## Staged (ILO profusion) figures" in md.read_text() and "κ (quadratic)" in md.read_text()
    (study,) = find_studies(tmp_path / "results" / "table6")
    report = aggregate_table(study / "runs", tmp_path / "table", "table6", num_folds=2, n_boot=50, use_wandb=False)
    text = report.table_md.read_text()
    assert "Stage acc." in text and "Pooled confusion matrix" in text and "Sens. pooled [95% CI]" in text
    assert {"confusion.png", "stage_roc.png", "roc.png"} <= {f.name for f in report.figures}
    rows = _rows(report.table_csv)
    assert len(rows) == 6 and all(r["kappa_pooled"] != "" and r["auc_mean"] != "" for r in rows)


def test_predict_gives_each_films_stage_probabilities(staged_manifest: Path, tmp_path: Path) -> None:
    from pneumollm.cli.predict import main as predict_main
    from pneumollm.training.run import run_fold

    cfg = compose_train([*TOY, f"data.source.manifest={staged_manifest}", f"paths.root_dir={tmp_path}",
                         "data.task=multiclass", "model=timm_resnet18", "model.model_name=test_resnet"],
                        run_dir=tmp_path / "run")
    run_fold(cfg)
    out = tmp_path / "p.csv"
    films = sorted((staged_manifest.parent / "films").glob("*.png"))[:3]
    assert predict_main([str(tmp_path / "run"), *map(str, films), "--out", str(out), "--no-progress"]) == 0
    rows = _rows(out)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    for row in rows:
        stages = [float(row[f"prob_stage_{c}"]) for c in "0123"]
        assert row["pred_stage"] == str(int(np.argmax(stages)))
        assert float(row["prob"]) == pytest.approx(1 - stages[0], abs=2e-6)
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert recorded["task"] == "multiclass"


def test_the_demo_cohort_reads_its_stages(tmp_path: Path) -> None:
    from pneumollm.data.sources import list_cohort

    source = {"kind": "demo", "dir": str(tmp_path / "demo"), "n_patients": 24, "image_size": 64,
              "include_faulty": False}
    listing = list_cohort(source, progress=False, task=STAGES)
    assert {r.target for r in listing.records} == {0, 1, 2, 3}
    assert all(r.label == int(r.target >= 1) for r in listing.records)
    with pytest.raises(CohortError, match="multilabel needs a cohort of your own"):
        list_cohort(source, progress=False, task=FINDINGS)


@pytest.mark.parametrize("model", sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "model").glob("*.yaml")
                                          if not p.stem.startswith("full_")))  # full sizes: test_arms_param_count
def test_every_model_config_gives_one_output_per_stage(model: str, tmp_path: Path, tiny_cache_one_thread) -> None:
    from hydra.utils import instantiate

    cfg = compose_train(["data.task=multiclass", f"model={model}"], run_dir=tmp_path)
    net = instantiate(cfg.model, _convert_="object")
    size = 224 if model != "timm_resnet18" else 64
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 1, size, size)).shape == (1, 4)
    assert getattr(net, "num_classes", 4) == 4


def test_a_multilabel_study_summarises_and_tabulates_each_finding(staged_manifest: Path, tmp_path: Path,
                                                                 tiny_cache_one_thread) -> None:
    from pneumollm.analysis.collect import collect_runs, find_studies
    from pneumollm.analysis.report import aggregate_table
    from pneumollm.analysis.summary import summarise_arm, write_summary
    from tests.test_sweeps import _run_sweep_in_process

    extra = ["data.task=multilabel", "data.label_columns=[pneumoconiosis,tb,emphysema]", "data.batch_size=8"]
    _run_sweep_in_process("table4", tmp_path, staged_manifest, [[*extra, f"arm={a}", f"data.fold={f}"]
                                                                for a in ("pneumollm", "pneumollm_no_llm")
                                                                for f in (0, 1)])
    (study,) = find_studies(tmp_path / "results" / "table4")
    assert "-multilabel-" in study.name
    arms = collect_runs(study / "runs")
    assert {a.task for a in arms.values()} == {"multilabel"}
    summaries = [summarise_arm(a, n_boot=50) for a in arms.values()]
    csv_path, md = write_summary(summaries, tmp_path / "summary")
    assert "## Multi-label (co-finding) figures" in md.read_text() and "finding" in md.read_text()
    assert {"auc_tb", "pooled_micro_auc_ci_low", "sensitivity_emphysema"} <= set(_rows(csv_path)[0])
    report = aggregate_table(study / "runs", tmp_path / "table", "table4", num_folds=2, n_boot=50, use_wandb=False)
    assert "finding_roc.png" in {f.name for f in report.figures}
    assert "confusion.png" not in {f.name for f in report.figures}
    assert all(r["macro_auc_pooled"] != "" for r in _rows(report.table_csv))
