"""One job of ``pneumollm-train``: an (arm, fold) from a composed config, from its run folder's claim to its results.

Two functions, read top to bottom:

- ``run_fold`` wraps the job (as the lightning-hydra-template's ``task_wrapper``): it locks the run folder,
  prepares the cohort, skips a job whose folder already holds this config's results, claims the folder, trains,
  writes the results, and records a failure (a sweep goes on after one).
- ``train_fold`` is the job itself: the fold's films, the model, the trainer, fitting, the threshold and the test,
  returned as a ``FoldResult``.

The run folder's protocol (who owns it, resuming, setting outputs aside, its files) is ``training.run_folder``;
the Lightning details are ``training.trainer``. docs/run_folder.md walks through a run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from pneumollm.data.datamodule import CohortDataModule
from pneumollm.data.targets import LabelTask
from pneumollm.errors import ConfigError, describe
from pneumollm.models.param_count import ParameterCounts
from pneumollm.training import sweep_report
from pneumollm.training.fold_metrics import HEADLINE, TEST_PREFIX, FoldMetrics
from pneumollm.training.losses import check_loss_for_task
from pneumollm.training.module import ClassificationModule
from pneumollm.training.prefix_cache import serve_cached_prefix
from pneumollm.training.recalibration import check_calibration
from pneumollm.training.records import config_hash, prediction_rows
from pneumollm.training.run_folder import (
    FAILED_FILE,
    LAST_CHECKPOINT,
    FoldResult,
    JobLockedError,
    RunFolder,
    TestFeatures,
)
from pneumollm.training.thresholds import choose_threshold, threshold_mode
from pneumollm.training.trainer import (
    apply_cpu_threads,
    build_loggers,
    check_launch,
    checkpoint_dir,
    chosen,
    finish_wandb,
    fit,
    in_multirun,
    instantiate_callbacks,
    job_name,
    launched_rank,
    log_summary,
    named_interrupt,
    peak_memory_mb,
    selected_checkpoint,
    single_process_tester,
    trainer_config,
)
from pneumollm.utils.console import say


def run_fold(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one fold; skip it when its run folder already holds this config's results. Returns the
    fold's metrics (as in metrics.json; {} in a DDP child, a ``skipped`` or ``failed`` marker in a sweep).

    In a multirun, a failing job is recorded in ``failed.json`` and the sweep goes on; in a single run the
    error propagates. A job whose folder another process is running is skipped in a sweep (an error alone).
    """
    check_launch(cfg)
    folder, job = RunFolder(cfg.paths.run_dir), job_name(cfg)
    folder.path.mkdir(parents=True, exist_ok=True)
    if launched_rank() > 0:  # a DDP child: rank 0 owns the folder, decides and writes
        train_fold(cfg, prepare_job(cfg), folder)
        return {}
    try:
        folder.lock(job)
    except JobLockedError as err:
        if not in_multirun():
            raise
        say(f"[yellow]skip[/yellow] {err}")
        return {"skipped": "locked"}
    chash = None
    try:
        prepared = prepare_job(cfg)
        chash = prepared.config_hash
        status = folder.status()
        if status.complete and status.config_hash == chash and not cfg.get("force", False):
            say(f"[green]skip[/green] {job}: done ({folder.path})")
            folder.backfill_profile(prepared.datamodule)  # a run finished before profiles were recorded
            return status.metrics.to_dict() if status.metrics else {}
        folder.claim(job, chash, prepared.identity, cfg, prepared.datamodule.settings,
                     force=bool(cfg.get("force", False)))
        result = train_fold(cfg, prepared, folder)
        folder.finish(result)
        say(f"[bold]{cfg.experiment.arm}[/bold] fold {cfg.data.fold}: " + ", ".join(
            f"{name} {result.metrics.test[name]:.1f}" for name in HEADLINE) + f"  -> {folder.path}")
        return result.metrics.to_dict()
    except Exception as err:
        folder.write_failure(err, str(cfg.experiment.arm), int(cfg.data.fold), chash)
        if not in_multirun():
            raise
        shown_by = sweep_report.first_shown_by(describe(err), job)
        why = describe(err) if shown_by is None else f"the same error as {shown_by}"
        say(f"[red]FAILED[/red] {job}: {why} (recorded in {folder.path / FAILED_FILE}); the sweep goes on")
        return {"failed": True}
    finally:
        folder.unlock()
        finish_wandb()


@dataclass(frozen=True)
class PreparedJob:
    """A job's prepared cohort, what it contributes to the result (``identity``) and the job's config hash."""

    datamodule: CohortDataModule
    identity: dict[str, Any]
    config_hash: str


def prepare_job(cfg: DictConfig) -> PreparedJob:
    """The cohort of ``cfg.data``, prepared (films preprocessed or found in the cache, folds assigned), and the
    hash of what the job's result depends on (the semantic config and the cohort's identity)."""
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule: CohortDataModule = instantiate(cfg.data, _convert_="object")
    datamodule.prepare_data()
    identity = datamodule.cohort_identity()
    return PreparedJob(datamodule, identity, config_hash(cfg, identity))


def train_fold(cfg: DictConfig, prepared: PreparedJob, folder: RunFolder) -> FoldResult | None:
    """Train and test fold ``data.fold`` of the prepared cohort: the fold's films, the model, the trainer, fitting
    (resumed from this config's ``last.ckpt``), the threshold (and the recalibration, ``calibration=...``) and the
    test. Returns what the run folder is to hold; None in a DDP child (rank 0 tests alone)."""
    datamodule, chash = prepared.datamodule, prepared.config_hash
    writer = launched_rank() == 0
    apply_cpu_threads(cfg)
    datamodule.setup("fit")
    task, sizes, small_splits = datamodule.task, datamodule.split_sizes(), datamodule.split_warnings()
    calibration = check_calibration(cfg.get("calibration"), task, datamodule.selection_split, sizes["val"]["films"])
    if writer:
        folder.write_profile(datamodule)
        _announce(str(cfg.experiment.arm), int(cfg.data.fold), task, sizes, small_splits)

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)  # model init independent of data preparation
    built = time.perf_counter()
    net = instantiate(cfg.model, _convert_="object")
    build_seconds = time.perf_counter() - built
    _check_outputs(str(cfg.experiment.arm), net, task)
    loss = instantiate(cfg.loss)
    check_loss_for_task(loss, task.task, chosen("loss"))
    module = ClassificationModule(
        net=net, loss=loss, optimizer=instantiate(cfg.optimizer), task=task,
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        weight_decay=float(cfg.weight_decay), threshold=threshold_mode(cfg.threshold)[1],
        save_features=bool(cfg.get("save_features", True)), run_identity={"config_hash": chash},
        log_every_step=bool(cfg.get("log_every_step", False)),
    )
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    trainer: L.Trainer = instantiate(trainer_config(cfg), logger=build_loggers(cfg, chash) or False,
                                     callbacks=list(callbacks.values()), default_root_dir=str(folder.path))
    best_cb, last_cb = callbacks.get("checkpoint"), callbacks.get("last_checkpoint")
    counts = ParameterCounts.of(net)  # nf4 weights counted by their logical size, not their packed storage
    cache_key = serve_cached_prefix(str(cfg.get("feature_cache", "auto")), net, module, trainer, datamodule, writer,
                                    progress=bool(cfg.data.get("progress", True)))

    started = time.perf_counter()
    tested: str | None = None  # the checkpoint the test loads; None: the model as built
    if counts.trainable > 0 and int(cfg.trainer.get("max_epochs", 1)) > 0:
        resume = folder.resume_checkpoint(checkpoint_dir(last_cb, best_cb), chash, decide=writer)
        fit(trainer, module, datamodule, resume, job_name(cfg))
        tested = selected_checkpoint(cfg.selection, best_cb, last_cb)
    elif writer:
        say(f"{cfg.experiment.arm} has no trainable parameters: evaluating without training")
    train_seconds = time.perf_counter() - started
    epochs_run = int(trainer.current_epoch)

    tester = single_process_tester(trainer, cfg)
    if tester is None:  # a DDP child: rank 0 tests the whole test set alone
        return None
    with named_interrupt(tester, job_name(cfg)):
        thresholds = choose_threshold(cfg.threshold, tester, module, datamodule, tested, calibration)
        tester.test(module, datamodule=datamodule, ckpt_path=tested, verbose=False)
    peak_mb, peak_kind = peak_memory_mb()

    metrics = FoldMetrics(
        fold=int(cfg.data.fold), arm=str(cfg.experiment.arm), label=str(cfg.experiment.label),
        experiment=str(cfg.experiment.name), seed=int(cfg.seed), debug=cfg.experiment.get("debug"),
        test={k.removeprefix(TEST_PREFIX): v for k, v in module.test_results.items()}, confusion=module.test_confusion,
        trainable_params=int(counts.trainable), total_params=int(counts.total), peak_memory_mb=round(peak_mb, 1),
        peak_memory_kind=peak_kind, build_seconds=round(build_seconds, 2), train_seconds=round(train_seconds, 2),
        epochs_run=epochs_run, selection=str(cfg.selection), selection_split=str(cfg.data.selection_split),
        checkpoint=folder.relative(tested), **_selected_validation(module, tested), **thresholds, splits=sizes,
        config_hash=chash, cohort=prepared.identity, feature_cache=cache_key,
        cohort_name=datamodule.cohort_name, cohort_folder=str(datamodule.cohort_folder.resolve()), task=task.task,
        classes=list(task.output_names), class_names=list(task.class_names), size=str(cfg.get("size_name", "?")),
        warnings=small_splits,
    )
    log_summary(trainer, metrics.to_dict())
    predictions, films = module.test_predictions, datamodule.datasets["test"].films
    features = TestFeatures(predictions["features"], predictions["label"],
                            [films[i].image_id for i in predictions["index"].tolist()]) \
        if "features" in predictions else None
    return FoldResult(metrics, prediction_rows(predictions, films, int(cfg.data.fold), module.threshold, task), task,
                      features, _spare_checkpoint(str(cfg.selection), last_cb, tested))


def _announce(arm: str, fold: int, task: LabelTask, sizes: dict[str, dict[str, int]], warnings: list[str]) -> None:
    """The fold's split sizes on the console, and a warning per split too small to trust."""
    negative, positive = task.class_names
    say(f"[bold]{arm}[/bold] fold {fold}: " + ", ".join(
        f"{name} {s['films']} films / {s['patients']} patients ({s['positives']} {positive} / "
        f"{s['films'] - s['positives']} {negative} films; {s['positive_patients']} {positive} / "
        f"{s['patients'] - s['positive_patients']} {negative} patients)" for name, s in sizes.items()))
    for warning in warnings:
        say(f"[yellow]warning:[/yellow] {arm} {warning}")


def _check_outputs(arm: str, net: torch.nn.Module, task: LabelTask) -> None:
    """Refuse a model whose output count does not fit the task."""
    outputs = getattr(net, "num_classes", task.num_outputs)
    if int(outputs) != task.num_outputs:
        raise ConfigError(f"arm {arm} has {outputs} outputs but data.task={task.task} needs "
                          f"{task.num_outputs} ({', '.join(task.output_names)}); its model config sets the count "
                          "(num_classes, prompts or answers: leave them at their task defaults)")


def _selected_validation(module: ClassificationModule, checkpoint: str | None) -> dict[str, Any]:
    """The epoch of the tested checkpoint and its validation figures (what selection saw), for metrics.json and
    the W&B summary (whose val/* would otherwise be the last epoch's)."""
    if not checkpoint:
        return {"selected_epoch": None, "val": {}}
    epoch = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])
    return {"selected_epoch": epoch, "val": {k: round(v, 4) for k, v in module.val_history.get(epoch, {}).items()}}


def _spare_checkpoint(selection: str, last_cb: ModelCheckpoint | None, tested: str | None) -> Path | None:
    """``last.ckpt`` where the best checkpoint was tested: needed only to resume an interrupted run."""
    if last_cb is None or selection != "best" or not last_cb.dirpath:
        return None
    last = Path(last_cb.dirpath) / LAST_CHECKPOINT
    return last if tested and Path(tested) != last else None
