"""Train and test one (arm, fold) from a composed config, and write its run directory."""

from __future__ import annotations

import resource
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig
from rich.console import Console

from pneumollm.data.datamodule import CohortDataModule
from pneumollm.training.module import ClassificationModule
from pneumollm.training.records import (
    FAILED_FILE,
    config_hash,
    read_metrics,
    write_config,
    write_failure,
    write_features,
    write_metrics,
    write_predictions,
)

console = Console(stderr=True)


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _instantiate_dict(node: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config dict whose value has a ``_target_`` (callbacks, loggers)."""
    if not node:
        return []
    return [instantiate(v) for v in node.values() if isinstance(v, DictConfig) and "_target_" in v]


def _build_loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        try:
            loggers.append(instantiate(node))
        except Exception as err:  # W&B missing or broken: keep the CSV record and say so
            console.print(f"[yellow]logger {name} unavailable ({type(err).__name__}: {err}); continuing without it")
    return loggers


def _finish_wandb() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:
        pass


def _peak_memory_mb() -> tuple[float, str]:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "host_max_rss_process"


def run_fold(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one fold; skip it when ``metrics.json`` with the same config hash exists.

    In a multirun, a failing job is recorded in ``failed.json`` and the sweep goes on; in a single run the
    error propagates.
    """
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    chash = config_hash(cfg)
    done = read_metrics(run_dir)
    if done and done.get("config_hash") == chash and not cfg.get("force", False):
        console.print(f"[green]skip[/green] {cfg.experiment.arm} fold {cfg.data.fold}: done ({run_dir})")
        return done
    try:
        metrics = _train_and_test(cfg, run_dir, chash)
        (run_dir / FAILED_FILE).unlink(missing_ok=True)
        return metrics
    except Exception as err:
        write_failure(run_dir, {"arm": cfg.experiment.arm, "fold": int(cfg.data.fold), "config_hash": chash,
                                "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        if not _in_multirun():
            raise
        console.print(f"[red]FAILED[/red] {cfg.experiment.arm} fold {cfg.data.fold}: {type(err).__name__}: {err}"
                      f" (recorded in {run_dir / FAILED_FILE}); the sweep goes on")
        return {"failed": True}
    finally:
        _finish_wandb()


def _train_and_test(cfg: DictConfig, run_dir: Path, chash: str) -> dict[str, Any]:
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule: CohortDataModule = instantiate(cfg.data, _convert_="object")
    datamodule.prepare_data()
    datamodule.setup("fit")
    sizes = datamodule.split_sizes()
    console.print(f"[bold]{cfg.experiment.arm}[/bold] fold {cfg.data.fold}: " + ", ".join(
        f"{name} {s['films']} films / {s['patients']} patients ({s['positives']} positive)"
        for name, s in sizes.items()))

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)  # model init independent of data preparation
    net = instantiate(cfg.model, _convert_="object")
    module = ClassificationModule(
        net=net, loss=instantiate(cfg.loss), optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        weight_decay=float(cfg.weight_decay), threshold=float(cfg.threshold),
        save_features=bool(cfg.get("save_features", True)),
    )
    write_config(run_dir, cfg)
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=_build_loggers(cfg) or False, callbacks=callbacks,
                                     default_root_dir=str(run_dir))
    checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())

    started = time.perf_counter()
    test_ckpt: str | None = None
    if trainable > 0 and int(cfg.trainer.get("max_epochs", 1)) > 0:
        last = Path(checkpoint.dirpath) / "last.ckpt" if checkpoint and checkpoint.dirpath else None
        resume = str(last) if last is not None and last.is_file() else None
        if resume:
            console.print(f"resuming from {resume}")
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
        if checkpoint is not None:
            test_ckpt = checkpoint.best_model_path if cfg.selection == "best" and checkpoint.best_model_path \
                else checkpoint.last_model_path or None
    else:
        console.print(f"{cfg.experiment.arm} has no trainable parameters: evaluating without training")
    train_seconds = time.perf_counter() - started

    trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False)
    peak_mb, peak_kind = _peak_memory_mb()
    test_set = datamodule.datasets["test"]
    preds = module.test_predictions
    write_predictions(run_dir, (
        {"image_id": test_set.films[i].image_id, "patient_id": test_set.films[i].patient_id, "fold": int(cfg.data.fold),
         "label": int(label), "prob": f"{prob:.6f}"}
        for i, label, prob in zip(preds["index"].tolist(), preds["label"].tolist(), preds["prob"].tolist())
    ))
    if "features" in preds:
        write_features(run_dir, preds["features"], preds["label"],
                       [test_set.films[i].image_id for i in preds["index"].tolist()])
    metrics = {
        **{k: round(v, 4) for k, v in module.test_results.items()},
        "fold": int(cfg.data.fold), "arm": str(cfg.experiment.arm), "label": str(cfg.experiment.label),
        "experiment": str(cfg.experiment.name), "seed": int(cfg.seed),
        "trainable_params": int(trainable), "total_params": int(total),
        "peak_memory_mb": round(peak_mb, 1), "peak_memory_kind": peak_kind,
        "train_seconds": round(train_seconds, 2), "epochs_run": int(trainer.current_epoch),
        "selection": str(cfg.selection), "selection_split": str(cfg.data.selection_split),
        "checkpoint": str(Path(test_ckpt).relative_to(run_dir)) if test_ckpt and Path(test_ckpt).is_relative_to(run_dir)
        else test_ckpt,
        "splits": sizes, "config_hash": chash, "cohort_folder": str(datamodule.cohort_folder.resolve()),
    }
    write_metrics(run_dir, metrics)
    if checkpoint is not None and cfg.selection == "best":
        last = Path(checkpoint.dirpath) / "last.ckpt"
        if test_ckpt and Path(test_ckpt) != last:
            last.unlink(missing_ok=True)  # only needed to resume an interrupted run; the run is complete
    _log_summary(trainer, metrics)
    console.print(f"[bold]{cfg.experiment.arm}[/bold] fold {cfg.data.fold}: " + ", ".join(
        f"{k.split('/')[1]} {metrics[k]:.1f}" for k in ("test/sensitivity", "test/specificity", "test/accuracy",
                                                          "test/auc", "test/avg")) + f"  -> {run_dir}")
    return metrics


def _log_summary(trainer: L.Trainer, metrics: dict[str, Any]) -> None:
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        summary = getattr(experiment, "summary", None)
        if summary is not None:
            summary.update({k: v for k, v in metrics.items() if isinstance(v, int | float | str)})
