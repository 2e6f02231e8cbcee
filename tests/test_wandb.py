"""W&B runs read back from their offline files: each fold carries its config and a stable id that a resumed
fold keeps, the summary holds the selected checkpoint's validation figures, re-aggregating updates one
aggregate run, and the sync command finds them all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pneumollm.analysis.wandb_sync import offline_runs
from pneumollm.cli.aggregate import main as aggregate_main
from pneumollm.cli.wandb_sync import main as sync_main
from pneumollm.training.run import run_fold
from tests.helpers import compose_train, crash_at_epoch, wandb_records, wandb_run_contents
from tests.test_training import TOY

WANDB = [o if o != "logger=csv" else "logger=wandb" for o in TOY]


@pytest.fixture(scope="module")
def manifest(toy_cohort) -> Path:
    return toy_cohort(n_patients=18, films_per_patient=1, size=40)


def _cfg(manifest: Path, root: Path, fold: int = 0, *extra: str):
    return compose_train([*WANDB, f"data.source.manifest={manifest}", f"paths.root_dir={root}",
                          "trainer.max_epochs=3", f"data.fold={fold}", *extra],
                         run_dir=root / "study" / "timm_resnet18" / f"fold{fold}")


def test_a_fold_run_carries_its_config_and_the_selected_epochs_validation_figures(manifest: Path,
                                                                                 tmp_path: Path) -> None:
    metrics = run_fold(_cfg(manifest, tmp_path))
    (run_dir,) = offline_runs([tmp_path])
    run_id, config, summary = wandb_run_contents(run_dir)
    assert run_id == metrics["config_hash"]
    assert config["table"] == "default" and config["arm"] == "timm_resnet18" and config["fold"] == 0
    assert config["size"] == "tiny" and config["cohort"].startswith("manifest-")
    assert config["data.batch_size"] == 8 and config["model.model_name"] == "test_resnet"  # flattened keys
    assert metrics["val"] and summary["val/avg"] == pytest.approx(metrics["val"]["val/avg"])
    assert summary["test/auc"] == pytest.approx(metrics["test/auc"])


def test_a_resumed_fold_continues_its_run(manifest: Path, tmp_path: Path) -> None:
    with crash_at_epoch(2), pytest.raises(RuntimeError, match="simulated interruption"):
        run_fold(_cfg(manifest, tmp_path))
    metrics = run_fold(_cfg(manifest, tmp_path))
    runs = offline_runs([tmp_path])
    assert len(runs) == 2 and {wandb_run_contents(r)[0] for r in runs} == {metrics["config_hash"]}


def test_reaggregating_updates_one_aggregate_run_and_sync_lists_every_run(manifest: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    for fold in (0, 1, 2):
        run_fold(_cfg(manifest, tmp_path, fold, "trainer.max_epochs=1"))
    args = [str(tmp_path / "study"), "--num-folds", "3", "--table", "table6", "--bootstrap", "20"]
    assert aggregate_main(args) == 0
    assert aggregate_main([*args, "--force"]) == 0
    aggregates = offline_runs([tmp_path / "study" / "wandb"])
    assert len(aggregates) == 2 and len({wandb_run_contents(r)[0] for r in aggregates}) == 1
    (run_file,) = aggregates[-1].glob("run-*.wandb")
    logged = {"/".join([i.key] if i.key else i.nested_key): json.loads(i.value_json) for r in wandb_records(run_file)
              if r.WhichOneof("record_type") == "history" for i in r.history.item}  # media as key/_type, key/path...
    assert {"table/path", "per_fold/path", "decision_curve/path", "calibration/path"} <= set(logged), sorted(logged)
    (table,) = (aggregates[-1] / "files").glob(logged["table/path"])  # the table.csv columns, calibration's too
    columns = json.loads(table.read_text())["columns"]
    assert {"brier_pooled", "ece_pooled_ci_low", "calibration_slope_mean", "calibration_intercept_std"} <= set(columns)
    capsys.readouterr()
    assert sync_main([str(tmp_path / "study"), "--dry-run"]) == 0
    listed = capsys.readouterr().out.split()
    assert len(listed) == 5 and set(listed) == {str(r) for r in offline_runs([tmp_path])}
