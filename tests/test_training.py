"""One fold end to end through the composed config: outputs, skipping done runs, exact resumption."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumollm.training.run import run_fold
from tests.helpers import compose_train, crash_at_epoch

TOY = ["data=manifest", "lungs=none", "model=timm_resnet18", "trainer=cpu", "logger=csv", "data.image_size=32",
       "data.progress=false", "data.preprocess_workers=1", "data.min_film_size=16", "data.num_folds=3",
       "data.batch_size=8", "callbacks.progress=null", "model.model_name=test_resnet",
       "+model.model_kwargs={drop_rate: 0.3}"]


@pytest.fixture(scope="module")
def manifest(toy_cohort) -> Path:
    return toy_cohort(n_patients=18, films_per_patient=2, size=40)


def _cfg(manifest: Path, root: Path, *extra: str):
    return compose_train([*TOY, f"data.source.manifest={manifest}", f"paths.root_dir={root}",
                          "trainer.max_epochs=3", *extra], run_dir=root / "run")


def _predictions(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "predictions.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_a_fold_run_writes_metrics_predictions_config_and_a_trainable_only_checkpoint(manifest: Path,
                                                                                    tmp_path: Path) -> None:
    cfg = _cfg(manifest, tmp_path)
    metrics = run_fold(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    # equal key by key; a figure that does not exist (NaN: e.g. the calibration slope of test films whose log-odds
    # separate the classes) reads back as NaN, which compares unequal to itself
    assert saved.keys() == metrics.keys()
    assert all(saved[k] == v or (isinstance(v, float) and np.isnan(v) and np.isnan(saved[k]))
               for k, v in metrics.items())
    for key in ("test/sensitivity", "test/specificity", "test/accuracy", "test/auc", "test/avg", "fold", "arm",
                "seed", "trainable_params", "total_params", "peak_memory_mb", "train_seconds", "config_hash"):
        assert key in saved, key
    assert saved["arm"] == "timm_resnet18" and saved["fold"] == 0
    rows = _predictions(run)
    assert len(rows) == saved["splits"]["test"]["films"] and {r["fold"] for r in rows} == {"0"}
    assert (run / "config.yaml").is_file()
    features = np.load(run / "features.npz")  # the head's input of every test film, for the t-SNE figure
    assert features["features"].shape[0] == len(rows) and np.isfinite(features["features"]).all()
    assert sorted(features["image_ids"].tolist()) == sorted(r["image_id"] for r in rows)
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["state_dict"] and all(k.startswith("net.") for k in ckpt["state_dict"])
    assert not (run / "checkpoints" / "last.ckpt").exists()  # only kept while a run can still be resumed


def test_frozen_weights_are_left_out_of_checkpoints(manifest: Path, tmp_path: Path) -> None:
    cfg = _cfg(manifest, tmp_path, "trainer.max_epochs=1")
    from hydra.utils import instantiate

    from pneumollm.training.module import ClassificationModule

    net = instantiate(cfg.model)
    for name, param in net.named_parameters():
        param.requires_grad = name.startswith("backbone.fc")
    module = ClassificationModule(net, instantiate(cfg.loss), instantiate(cfg.optimizer))
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    params = {k for k in checkpoint["state_dict"] if "running_" not in k and "num_batches" not in k}
    assert params == {"net.backbone.fc.weight", "net.backbone.fc.bias"}


def test_a_finished_run_with_the_same_config_is_skipped(manifest: Path, tmp_path: Path) -> None:
    cfg = _cfg(manifest, tmp_path, "trainer.max_epochs=1")
    run_fold(cfg)
    stamp = (tmp_path / "run" / "metrics.json").stat().st_mtime_ns
    run_fold(cfg)
    assert (tmp_path / "run" / "metrics.json").stat().st_mtime_ns == stamp
    changed = _cfg(manifest, tmp_path, "trainer.max_epochs=2")  # another config: the run is redone
    run_fold(changed)
    assert (tmp_path / "run" / "metrics.json").stat().st_mtime_ns != stamp


def test_a_resumed_run_equals_an_uninterrupted_one(manifest: Path, tmp_path: Path, capfd) -> None:
    straight = run_fold(_cfg(manifest, tmp_path / "a"))
    with crash_at_epoch(2), pytest.raises(RuntimeError, match="simulated interruption"):
        run_fold(_cfg(manifest, tmp_path / "b"))
    assert (tmp_path / "b/run/checkpoints/last.ckpt").is_file() and not (tmp_path / "b/run/metrics.json").exists()
    capfd.readouterr()
    resumed = run_fold(_cfg(manifest, tmp_path / "b"))
    assert "resuming from" in capfd.readouterr().err
    assert _predictions(tmp_path / "a/run") == _predictions(tmp_path / "b/run")
    for key in ("test/auc", "test/avg", "epochs_run"):
        assert resumed[key] == straight[key]


def test_the_cohorts_own_columns_reach_the_cohort_index_and_the_predictions(manifest: Path, tmp_path: Path) -> None:
    rows = manifest.read_text().splitlines()
    with_site = tmp_path / "cohort" / "manifest.csv"
    with_site.parent.mkdir()
    (with_site.parent / "films").symlink_to(manifest.parent / "films")
    with_site.write_text("\n".join([rows[0] + ",site"] + [f"{r},{'north' if i % 2 else 'south'}"
                                                         for i, r in enumerate(rows[1:])]) + "\n")
    run_fold(_cfg(with_site, tmp_path, "trainer.max_epochs=1"))
    predictions = _predictions(tmp_path / "run")
    assert {r["site"] for r in predictions} <= {"north", "south"} and all(r["site"] for r in predictions)
    (index,) = (tmp_path / "data").rglob("cohort.csv")
    with index.open() as handle:
        assert "site" in next(csv.reader(handle))
