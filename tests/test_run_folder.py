"""The run folder protocol in one place: metrics.json through ``FoldMetrics`` (old and unknown keys included), the
folder's status as aggregation counts it, claiming, resuming, setting aside, locking, and the thin training step."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pneumollm.analysis.collect import check_complete, collect_runs
from pneumollm.data.preprocess import PreprocessSettings
from pneumollm.data.targets import LabelTask
from pneumollm.training.fold_metrics import FoldMetrics
from pneumollm.training.run_folder import (
    RUN_IDENTITY_KEY,
    FoldResult,
    JobLockedError,
    RunFolder,
    run_dirs_under,
)
from tests.helpers import compose_train, make_toy_manifest
from tests.test_training import TOY

# metrics.json of a binary run as the suite wrote it before FoldMetrics existed (every key it had)
WRITTEN_BEFORE = {
    "test/sensitivity": 75.0, "test/specificity": 50.0, "test/accuracy": 62.5, "test/auc": 68.75, "test/avg": 64.0625,
    "fold": 1, "arm": "timm_resnet18", "label": "ResNet-18", "experiment": "default", "seed": 20, "debug": None,
    "trainable_params": 1234, "total_params": 5678, "peak_memory_mb": 512.3, "peak_memory_kind": "host_max_rss_process",
    "build_seconds": 0.12, "train_seconds": 3.4, "epochs_run": 3, "selection": "best", "selection_split": "validation",
    "checkpoint": "checkpoints/best.ckpt", "selected_epoch": 2, "val": {"val/avg": 70.0}, "threshold": 0.5,
    "threshold_mode": "fixed", "threshold_fixed": 0.5, "threshold_validation": 0.41,
    "splits": {"test": {"films": 8, "patients": 4, "positives": 4, "positive_patients": 2}},
    "config_hash": "abc", "cohort": {"films": "F", "folds": "K", "preprocessing": "P", "num_films": 40},
    "feature_cache": None, "cohort_name": "toy", "cohort_folder": "/data/toy/none-32px-1234567890",
    "task": "binary", "classes": ["pneumoconiosis"], "class_names": ["normal", "pneumoconiosis"], "size": "tiny",
    "warnings": [],
}


def test_metrics_json_reads_back_to_the_same_dict() -> None:
    metrics = FoldMetrics.from_dict(WRITTEN_BEFORE)
    assert metrics.to_dict() == WRITTEN_BEFORE
    assert metrics.test["auc"] == 68.75 and metrics.threshold == 0.5 and metrics.extra == {}
    staged = FoldMetrics.from_dict({**WRITTEN_BEFORE, "task": "multiclass", "test/confusion": [[1, 0], [0, 1]]})
    assert staged.confusion == [[1, 0], [0, 1]] and "confusion" not in staged.test
    assert staged.to_dict()["test/confusion"] == [[1, 0], [0, 1]]


def test_old_and_unknown_metrics_keys_never_break_reading(tmp_path: Path) -> None:
    old = FoldMetrics.from_dict({"test/auc": 70.0, "fold": 0, "arm": "a", "val": None, "cohort": None})
    assert old.task is None and old.threshold is None and old.cohort == {} and old.val == {}
    assert math.isnan(old.figure("avg")) and old.figure("auc") == 70.0
    future = FoldMetrics.from_dict({**WRITTEN_BEFORE, "uncertainty": {"ece": 0.1}})
    assert future.extra == {"uncertainty": {"ece": 0.1}}
    folder = RunFolder(tmp_path)
    folder.write_metrics(future)
    assert json.loads((tmp_path / "metrics.json").read_text())["uncertainty"] == {"ece": 0.1}  # kept on rewrite
    recalibrated = FoldMetrics.from_dict({**WRITTEN_BEFORE, "calibration": {"method": "platt", "a": 1.5, "b": 0.2}})
    assert recalibrated.calibration == {"method": "platt", "a": 1.5, "b": 0.2} and recalibrated.extra == {}
    assert recalibrated.to_dict()["calibration"] == recalibrated.calibration
    assert "calibration" not in FoldMetrics.from_dict(WRITTEN_BEFORE).to_dict()  # written only when set
    (tmp_path / "metrics.json").write_text("{not json")
    assert folder.metrics() is None


def _folder(root: Path, name: str, job: dict | None = None, metrics: dict | None = None,
            failure: dict | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    for file, data in (("job.json", job), ("metrics.json", metrics), ("failed.json", failure)):
        if data is not None:
            (run / file).write_text(json.dumps(data))
    return run


def test_the_status_says_which_run_it_is_and_whether_it_counts(tmp_path: Path) -> None:
    done = _folder(tmp_path, "arm/fold0", {"config_hash": "A"}, {"config_hash": "A", "fold": 0, "arm": "x"})
    assert RunFolder(done).status().counts
    debug = _folder(tmp_path, "dbg/fold0", {"config_hash": "A"}, {"config_hash": "A", "fold": 0, "debug": "fdr"})
    assert RunFolder(debug).status().complete and not RunFolder(debug).status().counts
    started = RunFolder(_folder(tmp_path, "arm/fold3", {"config_hash": "B"})).status()
    assert (started.state, started.arm, started.fold) == ("incomplete", "arm", 3)  # named by its folders
    failed = RunFolder(_folder(tmp_path, "z/fold1", failure={"arm": "y", "fold": 4, "error": "boom"})).status()
    assert (failed.state, failed.arm, failed.fold, failed.reason) == ("failed", "y", 4, "boom")
    assert RunFolder(tmp_path / "nothing").status().state == "empty"
    aside = _folder(tmp_path, "arm/fold0/.superseded/old", {"config_hash": "A"})
    assert aside not in run_dirs_under(tmp_path) and done in run_dirs_under(tmp_path)


def test_a_claim_sets_another_configs_outputs_aside_and_records_the_owner(tmp_path: Path, capsys) -> None:
    run = _folder(tmp_path, "run", {"config_hash": "old"}, {"config_hash": "old", "fold": 0})
    folder = RunFolder(run)
    folder.claim("arm fold 0", "new", {"films": "F"}, OmegaConf.create({"seed": 1}), PreprocessSettings())
    assert folder.job()["config_hash"] == "new" and folder.config().seed == 1 and folder.metrics() is None
    (aside,) = (run / ".superseded").iterdir()
    assert aside.name.startswith("old-") and (aside / "metrics.json").is_file()
    assert "set aside the outputs of another config (old)" in capsys.readouterr().err


def test_only_this_configs_last_checkpoint_is_resumed(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.save({RUN_IDENTITY_KEY: {"config_hash": "A"}}, checkpoints / "last.ckpt")
    assert folder.resume_checkpoint(str(checkpoints), "A") == str(checkpoints / "last.ckpt")
    assert folder.resume_checkpoint(str(checkpoints), "B", decide=False) == str(checkpoints / "last.ckpt")
    assert folder.resume_checkpoint(str(checkpoints), "B") is None  # another config's: set aside
    assert not checkpoints.exists() and list((tmp_path / ".superseded").rglob("last.ckpt"))
    checkpoints.mkdir()
    (checkpoints / "last.ckpt").write_bytes(b"cut short by a kill")
    assert folder.resume_checkpoint(str(checkpoints), "A") is None and not checkpoints.exists()


def test_one_process_at_a_time_holds_a_folder(tmp_path: Path) -> None:
    first, second = RunFolder(tmp_path / "run"), RunFolder(tmp_path / "run")
    first.lock("arm fold 0")
    try:
        with pytest.raises(JobLockedError, match="another process is running this job"):
            second.lock("arm fold 0")
    finally:
        first.unlock()
    second.lock("arm fold 0")
    second.unlock()


def test_finishing_writes_the_results_and_clears_what_only_resuming_needed(tmp_path: Path) -> None:
    run = _folder(tmp_path, "run", {"config_hash": "A"}, failure={"config_hash": "A", "error": "earlier"})
    spare = run / "checkpoints" / "last.ckpt"
    spare.parent.mkdir()
    spare.write_bytes(b"x")
    rows = [{"image_id": "a", "patient_id": "P", "fold": 0, "label": 1, "prob": "0.9", "logit": "2.2", "pred": 1,
             "site": "north"}]
    RunFolder(run).finish(FoldResult(FoldMetrics(fold=0, arm="x", config_hash="A", test={"auc": 100.0}), rows,
                                     LabelTask(), spare_checkpoint=spare))
    assert not spare.exists() and not (run / "failed.json").exists()
    header = (run / "predictions.csv").read_text().splitlines()[0]
    assert header == "image_id,patient_id,fold,label,prob,logit,pred,site"
    assert RunFolder(run).status().counts


def test_a_failure_newer_than_the_results_is_read_from_the_folder(tmp_path: Path) -> None:
    run = _folder(tmp_path, "arm/fold0", {"config_hash": "A"}, {"config_hash": "A", "fold": 0, "arm": "arm"})
    try:
        raise RuntimeError("disk full")
    except RuntimeError as err:
        RunFolder(run).write_failure(err, "arm", 0, "A")
    os.utime(run / "failed.json", (time.time() + 1, time.time() + 1))
    record = RunFolder(run).failure()
    assert record["error"] == "RuntimeError: disk full" and "Traceback" in record["traceback"]
    problems = check_complete(collect_runs(tmp_path)["arm"], num_folds=1)
    assert problems == [f"arm 'arm' fold 0 is missing (failed: failed after its results were written: RuntimeError: "
                        f"disk full ({run}))"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    """A toy cohort's fold 0, prepared as a run prepares it, with every read of folds.csv counted."""
    from pneumollm.data import datamodule as datamodule_module
    from pneumollm.training.run import prepare_job

    root = tmp_path_factory.mktemp("prepared")
    manifest = make_toy_manifest(root / "toy", n_patients=12, films_per_patient=1, size=40)
    cfg = compose_train([*TOY, f"data.source.manifest={manifest}", f"paths.root_dir={root}", "trainer.max_epochs=1",
                         "lungs.margin=0.07"], run_dir=root / "run")
    reads: list[int] = []
    original = datamodule_module.load_or_make_folds

    def counted(*args, **kwargs):
        reads.append(1)
        return original(*args, **kwargs)

    datamodule_module.load_or_make_folds = counted
    try:
        job = prepare_job(cfg)
        job.datamodule.setup("fit")
    finally:
        datamodule_module.load_or_make_folds = original
    return cfg, job, len(reads)


def test_folds_are_assigned_once_per_run(prepared) -> None:
    _, job, reads = prepared
    datamodule = job.datamodule
    assert reads == 1 and datamodule.assignment is not None
    test_patients = {f.patient_id for f in datamodule.datasets["test"].films}
    assert test_patients == {p for p, fold in datamodule.assignment.items() if fold == 0}


def test_the_preprocessing_settings_are_made_in_one_place(prepared, tmp_path: Path) -> None:
    from pneumollm.data.preprocess_plan import preprocess_settings_from_config, read_plan, write_plan

    cfg, job, _ = prepared
    datamodule = job.datamodule
    settings = preprocess_settings_from_config(cfg.data)
    assert settings == datamodule.settings and settings.margin == 0.07 and "margin" not in settings.lungs
    write_plan(tmp_path / "preprocessing.json", settings)
    assert read_plan(tmp_path / "preprocessing.json") == settings
    assert read_plan(tmp_path / "preprocessing.json").fingerprint() == settings.fingerprint()
    record = json.loads((tmp_path / "preprocessing.json").read_text())
    assert record["tag"] == datamodule.cohort_folder.name  # the prepared cohort the run's films came from
    assert read_plan(tmp_path / "absent.json") is None


@pytest.mark.parametrize("content", ["{broken", json.dumps({"format": 99}), json.dumps({"format": 1, "margin": 0})])
def test_an_unreadable_preprocessing_plan_says_how_to_go_on(tmp_path: Path, content: str) -> None:
    from pneumollm.data.preprocess_plan import PreprocessPlanError, read_plan

    (tmp_path / "preprocessing.json").write_text(content)
    with pytest.raises(PreprocessPlanError, match=r"preprocessing\.json.*(delete it|delete the file)"):
        read_plan(tmp_path / "preprocessing.json")


def test_the_training_step_returns_the_results_and_leaves_writing_them_to_the_folder(prepared) -> None:
    from pneumollm.training.records import config_hash
    from pneumollm.training.run import train_fold

    cfg, job, _ = prepared
    chash = config_hash(cfg, job.datamodule.cohort_identity())
    assert job.config_hash == chash
    folder = RunFolder(cfg.paths.run_dir)
    result = train_fold(cfg, job, folder)
    assert result is not None and result.metrics.config_hash == chash and result.metrics.fold == 0
    assert len(result.predictions) == result.metrics.splits["test"]["films"]
    assert set(result.metrics.test) >= {"sensitivity", "specificity", "accuracy", "auc", "avg"}
    assert not (folder.path / "metrics.json").exists()  # the wrapper (run_fold) writes the results
    checkpoint = torch.load(folder.path / result.metrics.checkpoint, weights_only=True)
    assert "frozen_fingerprints" in checkpoint and "frozen_fingerprint" not in checkpoint  # one kind of fingerprint


class _Half(torch.nn.Module):
    """A net with a frozen and a trainable layer."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = torch.nn.Linear(3, 3).requires_grad_(False)
        self.head = torch.nn.Linear(3, 2)


def test_resuming_and_inference_check_the_same_per_tensor_fingerprints(tmp_path: Path) -> None:
    from pneumollm.inference.models import ModelLoadError, check_frozen
    from pneumollm.models.components.frozen import frozen_tensor_fingerprints
    from pneumollm.training.module import ClassificationModule, frozen_fingerprint

    torch.manual_seed(0)
    net = _Half()
    module = ClassificationModule(net=net, loss=None, optimizer=None)
    saved: dict = {"state_dict": {}}
    module.on_save_checkpoint(saved)
    assert saved["frozen_fingerprints"] == frozen_tensor_fingerprints(net) and "frozen_fingerprint" not in saved
    module.on_load_checkpoint(saved)  # the same base weights
    check_frozen(net, saved, tmp_path)
    legacy = {"frozen_fingerprint": frozen_fingerprint(net)}  # checkpoints written before per-tensor fingerprints
    module.on_load_checkpoint(legacy)
    check_frozen(net, legacy, tmp_path)
    other = _Half()  # other base weights
    with pytest.raises(RuntimeError, match=r"different frozen weights.*values of frozen\.weight"):
        ClassificationModule(net=other, loss=None, optimizer=None).on_load_checkpoint(saved)
    with pytest.raises(ModelLoadError, match=r"base weights differ.*values of frozen\.weight"):
        check_frozen(other, saved, tmp_path)
    with pytest.raises(RuntimeError, match="different frozen weights"):
        ClassificationModule(net=other, loss=None, optimizer=None).on_load_checkpoint(legacy)
    with pytest.raises(ModelLoadError, match="base weights differ"):
        check_frozen(other, legacy, tmp_path)
