"""Train and test one (arm, fold) from a composed config, and write its run directory.

A run directory belongs to one config at a time (its hash in ``job.json``): a finished run of the same
config is skipped, an interrupted one resumes from ``last.ckpt`` only when that checkpoint was written by
the same config, and the outputs of another config are set aside (``.superseded/``) before the new run
starts. A lock per run directory keeps two processes (two sweeps into one folder) from running one job.
"""

from __future__ import annotations

import os
import resource
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from filelock import FileLock, Timeout
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf

from pneumollm.data.datamodule import CohortDataModule
from pneumollm.data.film_profile import PROFILE_FILE, profile_prepared
from pneumollm.errors import ConfigError, Interrupted, UserError, describe, find_user_error
from pneumollm.models.param_count import ParameterCounts
from pneumollm.training import sweep_report
from pneumollm.training.losses import check_loss_for_task
from pneumollm.training.module import RUN_IDENTITY_KEY, ClassificationModule
from pneumollm.training.prefix_cache import CACHE_DIR, cache_prefix_features, plan_prefix_cache
from pneumollm.training.records import (
    CHECKPOINT_DIR,
    FAILED,
    FAILED_FILE,
    config_hash,
    number_text,
    read_job,
    run_status,
    set_aside,
    task_columns,
    write_config,
    write_failure,
    write_features,
    write_job,
    write_metrics,
    write_predictions,
)
from pneumollm.training.thresholds import threshold_mode, youden_threshold
from pneumollm.utils.console import say
from pneumollm.utils.quiet import quiet_wandb

LOCK_FILE = ".lock"
LAST_CHECKPOINT = "last.ckpt"


class JobLockedError(UserError):
    """Another process is running the same job (same run directory) right now."""


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def launched_rank() -> int:
    """This process's rank when a launcher started several (DDP children, SLURM tasks); 0 otherwise."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _instantiate_dict(node: DictConfig | None) -> dict[str, Any]:
    """Instantiate every entry of a config dict whose value has a ``_target_`` (callbacks), keyed by its name."""
    if not node:
        return {}
    return {k: instantiate(v) for k, v in node.items() if isinstance(v, DictConfig) and "_target_" in v}


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as one level of dotted keys (``model.encoder.adapter.hidden``), for dashboards."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def wandb_settings(cfg: DictConfig, chash: str) -> dict[str, Any]:
    """What a fold's W&B run gets besides its logger config: a stable id (the config hash, so a resumed fold
    continues its run and a rerun of the same job updates it) and the resolved config with the keys a
    dashboard groups by (table, arm, fold, size, cohort)."""
    keys = {"table": str(cfg.experiment.name), "arm": str(cfg.experiment.arm), "fold": int(cfg.data.fold),
            "size": str(cfg.get("size_name", "?")), "cohort": str(cfg.data.get("cohort", "?")),
            "config_hash": chash}
    return {"id": chash, "resume": "allow", "config": {**keys, **flat_config(cfg)}}


def _build_loggers(cfg: DictConfig, chash: str) -> list[Any]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        try:
            plain = OmegaConf.to_container(node, resolve=True)
            verbose = bool(plain.pop("verbose", False))  # the suite's own key: how much W&B prints
            extra = {}
            if str(plain.get("_target_", "")).endswith("WandbLogger"):
                extra = {**wandb_settings(cfg, chash), **quiet_wandb(verbose)}
            # partial first: instantiate's own first parameter is called ``config``, as W&B's is
            logger = instantiate(plain, _partial_=True)(**extra)
            # Lightning always passes ``anonymous`` to wandb.init, which then warns that it has no effect
            getattr(logger, "_wandb_init", {}).pop("anonymous", None)
            loggers.append(logger)
        except Exception as err:  # W&B missing or broken: keep the CSV record and say so
            say(f"[yellow]logger {name} unavailable ({type(err).__name__}: {err}); continuing without it")
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


def _job_name(cfg: DictConfig) -> str:
    return f"{cfg.experiment.arm} fold {cfg.data.fold}"


def run_fold(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one fold; skip it when its run directory already holds this config's results.

    In a multirun, a failing job is recorded in ``failed.json`` and the sweep goes on; in a single run the
    error propagates. A job whose folder another process is running is skipped in a sweep (an error alone).
    """
    _check_launch(cfg)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if launched_rank() > 0:  # a DDP child: rank 0 owns the folder, decides and writes
        datamodule = _prepared_datamodule(cfg)
        _train_and_test(cfg, run_dir, config_hash(cfg, datamodule.cohort_identity()), datamodule)
        return {}
    lock = FileLock(str(run_dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        message = f"{_job_name(cfg)}: another process is running this job in {run_dir}; leaving it to that process"
        if not _in_multirun():
            raise JobLockedError(message) from None
        say(f"[yellow]skip[/yellow] {message}")
        return {"skipped": "locked"}
    chash = None
    try:
        datamodule = _prepared_datamodule(cfg)
        chash = config_hash(cfg, datamodule.cohort_identity())
        status = run_status(run_dir)
        if status.complete and status.config_hash == chash and not cfg.get("force", False):
            say(f"[green]skip[/green] {_job_name(cfg)}: done ({run_dir})")
            if not (run_dir / PROFILE_FILE).is_file():  # a run finished before profiles were recorded
                datamodule.setup("fit")
                write_training_profile(run_dir, datamodule)
            return dict(status.metrics or {})
        _claim(run_dir, cfg, chash, datamodule)
        metrics = _train_and_test(cfg, run_dir, chash, datamodule)
        (run_dir / FAILED_FILE).unlink(missing_ok=True)
        return metrics
    except Exception as err:
        write_failure(run_dir, {"arm": cfg.experiment.arm, "fold": int(cfg.data.fold), "config_hash": chash,
                                "error": describe(err), "traceback": traceback.format_exc(),
                                "user_error": find_user_error(err) is not None})
        if not _in_multirun():
            raise
        shown_by = sweep_report.first_shown_by(describe(err), _job_name(cfg))
        why = describe(err) if shown_by is None else f"the same error as {shown_by}"
        say(f"[red]FAILED[/red] {_job_name(cfg)}: {why} (recorded in {run_dir / FAILED_FILE}); the sweep goes on")
        return {"failed": True}
    finally:
        lock.release()
        _finish_wandb()


def _check_launch(cfg: DictConfig) -> None:
    """Refuse DDP inside a local sweep: Lightning starts the other ranks by re-running the command line,
    which in a Hydra multirun would start the whole sweep again in every rank."""
    if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        raise ConfigError(f"trainer={_choice('trainer')} needs a CUDA GPU and none is visible; add trainer=cpu to run "
                          "on the CPU (the full size then needs about 16 GB of RAM in bf16, see README 'Running at "
                          "full size')")
    strategy = str(cfg.trainer.get("strategy", "auto"))
    several = str(cfg.trainer.get("devices", 1)) not in ("1", "auto")
    managed = int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1  # SLURM starts every rank itself
    if strategy.startswith("ddp") and several and _in_multirun() and not managed:
        raise ConfigError("trainer=ddp cannot run inside a local sweep (-m): run one fold at a time without -m "
                          "(data.fold=k), or sweep on SLURM with hydra/launcher=slurm_ddp")


def _choice(group: str) -> str:
    """The chosen config of ``group`` (e.g. ``gpu`` for trainer), or ``?`` outside the Hydra app."""
    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get(group, "?"))
    return "?"


def trainer_config(cfg: DictConfig) -> DictConfig:
    """``cfg.trainer`` without the suite's own keys (``cpu_threads``), as ``lightning.Trainer`` takes it."""
    node = OmegaConf.to_container(cfg.trainer, resolve=True)
    node.pop("cpu_threads", None)
    return OmegaConf.create(node)


def apply_cpu_threads(cfg: DictConfig) -> int | None:
    """Set torch's intra-op threads to ``trainer.cpu_threads`` when training runs on the CPU; returns the count
    set (None when it runs on a GPU or the setting is 0, torch's default)."""
    threads = int(cfg.trainer.get("cpu_threads", 0) or 0)
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if threads <= 0 or not on_cpu:
        return None
    torch.set_num_threads(threads)
    return threads


def _prepared_datamodule(cfg: DictConfig) -> CohortDataModule:
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule: CohortDataModule = instantiate(cfg.data, _convert_="object")
    datamodule.prepare_data()
    return datamodule


def _claim(run_dir: Path, cfg: DictConfig, chash: str, datamodule: CohortDataModule) -> None:
    """Make ``run_dir`` this config's: set aside another config's outputs, then write job.json and config.yaml."""
    job = read_job(run_dir)
    owner = job.get("config_hash") if job else None
    if owner != chash:
        failed = run_status(run_dir).state == FAILED
        where = set_aside(run_dir, f"failed-{owner or 'attempt'}" if failed else str(owner or "unknown"))
        if where is not None:
            what = ("a failed attempt" + (f" of config {owner}" if owner else "") if failed
                    else f"another config ({owner})" if owner else "an earlier run without a recorded config")
            say(f"[yellow]{_job_name(cfg)}: set aside the outputs of {what} in {where}[/yellow]")
    elif cfg.get("force", False):
        set_aside(run_dir, f"{chash}-forced")
    write_job(run_dir, {"config_hash": chash, "cohort": datamodule.cohort_identity(),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pid": os.getpid()})
    write_config(run_dir, cfg)


def write_training_profile(run_dir: Path, datamodule: CohortDataModule) -> None:
    """Write the profile of the fold's training films (``training_films.json``), which prediction compares new
    films to; a failure only warns (the run's results do not depend on it)."""
    from pneumollm.utils.io import atomic_write_json

    train = datamodule.datasets["train"]
    try:
        profile = profile_prepared(train.films, train.images[:, 0].numpy(), datamodule.prepared_dir)
        atomic_write_json(run_dir / PROFILE_FILE, profile)
    except Exception as err:  # never lose a fold to its profile
        say(f"[yellow]training-film profile not written ({type(err).__name__}: {err}); predictions with this "
            "model will have an empty shift column")


def _resume_path(checkpoints: ModelCheckpoint | None, run_dir: Path, chash: str) -> str | None:
    """``last.ckpt`` when it exists, is readable and was written by this config; otherwise set it aside."""
    if checkpoints is None or not checkpoints.dirpath:
        return None
    last = Path(checkpoints.dirpath) / LAST_CHECKPOINT
    if not last.is_file():
        return None
    try:
        owner = torch.load(last, map_location="cpu", weights_only=True).get(RUN_IDENTITY_KEY, {}).get("config_hash")
        why = None if owner == chash else f"it was written by config {owner or 'unknown'}, this run is {chash}"
    except Exception as err:  # a checkpoint cut short by a kill
        why = f"it cannot be read ({type(err).__name__}: {err})"
    if why is None:
        say(f"resuming from {last}")
        return str(last)
    where = set_aside(run_dir, "checkpoints-not-resumed", [CHECKPOINT_DIR])
    say(f"[yellow]not resuming from {last}: {why}; set aside in {where}; training from the start")
    return None


def _train_and_test(cfg: DictConfig, run_dir: Path, chash: str, datamodule: CohortDataModule) -> dict[str, Any]:
    apply_cpu_threads(cfg)
    datamodule.setup("fit")
    writer = launched_rank() == 0
    sizes = datamodule.split_sizes()
    negative, positive = datamodule.task.class_names
    small_splits = datamodule.split_warnings()
    if writer:
        write_training_profile(run_dir, datamodule)
        say(f"[bold]{cfg.experiment.arm}[/bold] fold {cfg.data.fold}: " + ", ".join(
            f"{name} {s['films']} films / {s['patients']} patients ({s['positives']} {positive} / "
            f"{s['films'] - s['positives']} {negative} films; {s['positive_patients']} {positive} / "
            f"{s['patients'] - s['positive_patients']} {negative} patients)" for name, s in sizes.items()))
        for warning in small_splits:
            say(f"[yellow]warning:[/yellow] {cfg.experiment.arm} {warning}")

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)  # model init independent of data preparation
    built = time.perf_counter()
    net = instantiate(cfg.model, _convert_="object")
    build_seconds = time.perf_counter() - built
    task = datamodule.task
    outputs = getattr(net, "num_classes", task.num_outputs)
    if int(outputs) != task.num_outputs:
        raise ConfigError(f"arm {cfg.experiment.arm} has {outputs} outputs but data.task={task.task} needs "
                          f"{task.num_outputs} ({', '.join(task.output_names)}); its model config sets the count "
                          "(num_classes, prompts or answers: leave them at their task defaults)")
    loss = instantiate(cfg.loss)
    check_loss_for_task(loss, task.task, _choice("loss"))
    module = ClassificationModule(
        net=net, loss=loss, optimizer=instantiate(cfg.optimizer), task=task,
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        weight_decay=float(cfg.weight_decay), threshold=threshold_mode(cfg.threshold)[1],
        save_features=bool(cfg.get("save_features", True)), run_identity={"config_hash": chash},
        log_every_step=bool(cfg.get("log_every_step", False)),
    )
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    trainer: L.Trainer = instantiate(trainer_config(cfg), logger=_build_loggers(cfg, chash) or False,
                                     callbacks=list(callbacks.values()), default_root_dir=str(run_dir))
    best_cb, last_cb = callbacks.get("checkpoint"), callbacks.get("last_checkpoint")
    counts = ParameterCounts.of(net)  # nf4 weights counted by their logical size, not their packed storage
    trainable, total = counts.trainable, counts.total
    cache_key = _use_prefix_cache(cfg, net, module, trainer, datamodule, writer)

    started = time.perf_counter()
    test_ckpt: str | None = None
    if trainable > 0 and int(cfg.trainer.get("max_epochs", 1)) > 0:
        resume = _resume_path(last_cb or best_cb, run_dir, chash) if writer else _rank_zero_resume(last_cb or best_cb)
        _fit(trainer, module, datamodule, resume, _job_name(cfg))
        test_ckpt = _selected_checkpoint(cfg.selection, best_cb, last_cb)
    elif writer:
        say(f"{cfg.experiment.arm} has no trainable parameters: evaluating without training")
    train_seconds = time.perf_counter() - started
    epochs_run = int(trainer.current_epoch)

    tester = _single_process_tester(trainer, cfg)
    if tester is None:  # a DDP child: rank 0 tests the whole test set alone
        return {}
    with _named_interrupt(tester, _job_name(cfg)):
        thresholds = _choose_threshold(cfg, tester, module, datamodule, test_ckpt)
        tester.test(module, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False)
    peak_mb, peak_kind = _peak_memory_mb()
    test_set = datamodule.datasets["test"]
    preds = module.test_predictions
    # every number exactly as the test figures (module.test_results) were computed from it
    write_predictions(run_dir, (
        {**test_set.films[i].extra, "image_id": test_set.films[i].image_id,
         "patient_id": test_set.films[i].patient_id, "fold": int(cfg.data.fold), "label": int(label),
         "prob": number_text(prob), "logit": number_text(logit), "pred": int(prob > module.threshold),
         **task_columns(task, target, outputs)}
        for i, label, prob, logit, target, outputs in zip(preds["index"].tolist(), preds["label"].tolist(),
                                                          preds["prob"].tolist(), preds["logit"].tolist(),
                                                          preds["target"], preds["outputs"])
    ), task)
    if "features" in preds:
        write_features(run_dir, preds["features"], preds["label"],
                       [test_set.films[i].image_id for i in preds["index"].tolist()])
    metrics = {
        **module.test_results,  # unrounded: equal to prediction_metrics on predictions.csv
        "fold": int(cfg.data.fold), "arm": str(cfg.experiment.arm), "label": str(cfg.experiment.label),
        "experiment": str(cfg.experiment.name), "seed": int(cfg.seed),
        "debug": cfg.experiment.get("debug"),
        "trainable_params": int(trainable), "total_params": int(total),
        "peak_memory_mb": round(peak_mb, 1), "peak_memory_kind": peak_kind,
        "build_seconds": round(build_seconds, 2), "train_seconds": round(train_seconds, 2), "epochs_run": epochs_run,
        "selection": str(cfg.selection), "selection_split": str(cfg.data.selection_split),
        "checkpoint": str(Path(test_ckpt).relative_to(run_dir)) if test_ckpt and Path(test_ckpt).is_relative_to(run_dir)
        else test_ckpt,
        **_selected_validation(module, test_ckpt), **thresholds,
        "splits": sizes, "config_hash": chash, "cohort": datamodule.cohort_identity(), "feature_cache": cache_key,
        "cohort_name": datamodule.cohort_name, "cohort_folder": str(datamodule.cohort_folder.resolve()),
        "task": task.task, "classes": list(task.output_names), "class_names": list(task.class_names),
        "size": str(cfg.get("size_name", "?")), "warnings": small_splits,
        **({"test/confusion": module.test_confusion} if module.test_confusion is not None else {}),
    }
    write_metrics(run_dir, metrics)
    if last_cb is not None and cfg.selection == "best" and last_cb.dirpath:
        last = Path(last_cb.dirpath) / LAST_CHECKPOINT
        if test_ckpt and Path(test_ckpt) != last:
            last.unlink(missing_ok=True)  # only needed to resume an interrupted run; the run is complete
    _log_summary(trainer, metrics)
    say(f"[bold]{cfg.experiment.arm}[/bold] fold {cfg.data.fold}: " + ", ".join(
        f"{k.split('/')[1]} {metrics[k]:.1f}" for k in ("test/sensitivity", "test/specificity", "test/accuracy",
                                                          "test/auc", "test/avg")) + f"  -> {run_dir}")
    return metrics


@contextmanager
def _named_interrupt(trainer: L.Trainer, job: str) -> Iterator[None]:
    """Ctrl-C inside a Lightning call, which Lightning turns into ``sys.exit(1)``, as ``Interrupted`` saying
    where the run stopped."""
    try:
        yield
    except SystemExit:
        if not trainer.interrupted:
            raise
        fitting = trainer.state.fn == TrainerFn.FITTING
        where = f"at epoch {trainer.current_epoch}" if fitting else "while testing"
        raise Interrupted(f"{job}: interrupted {where}; run the same command again to resume") from None


def _fit(trainer: L.Trainer, module: ClassificationModule, datamodule: CohortDataModule, resume: str | None,
         job: str) -> None:
    """``trainer.fit``, resuming from ``resume`` (our own checkpoint: Lightning's warning that its folder is not
    empty says nothing then)."""
    with warnings.catch_warnings(), _named_interrupt(trainer, job):
        if resume is not None:
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)


def _use_prefix_cache(cfg: DictConfig, net: Any, module: ClassificationModule, trainer: L.Trainer,
                      datamodule: CohortDataModule, writer: bool) -> str | None:
    """Serve the frozen prefix's cached features instead of images where that is valid (``feature_cache``)."""
    prefix = plan_prefix_cache(net, str(cfg.get("feature_cache", "auto")))
    if prefix is None or not any(p.requires_grad for p in net.parameters()):
        return None  # nothing trains: the test films go through once, a cache would only add the other splits
    started = time.perf_counter()
    key, computed = cache_prefix_features(
        prefix, datamodule.datasets.values(), datamodule.cohort_folder / CACHE_DIR,
        device=trainer.strategy.root_device, precision=str(trainer.precision),
        context=trainer.precision_plugin.forward_context, batch_size=datamodule.eval_batch_size,
        extra={"preprocessing": datamodule.cohort_identity()["preprocessing"]}, write=writer,
        progress=writer and bool(cfg.data.get("progress", True)))
    module.from_prefix = True
    if writer:
        films = sum(len(ds) for ds in datamodule.datasets.values())
        say(f"frozen-prefix features of {films} films from the cache ({computed} computed now, "
                      f"{time.perf_counter() - started:.1f} s; {CACHE_DIR}/{key}.pt)")
    return key


def _choose_threshold(cfg: DictConfig, tester: L.Trainer, module: ClassificationModule,
                      datamodule: CohortDataModule, checkpoint: str | None) -> dict[str, Any]:
    """Record the validation patients' Youden threshold for the tested checkpoint and set the one the test uses.

    With ``threshold=validation`` the test (metrics and each prediction's ``pred``) uses the validation one; it is
    refused where the validation films are the test fold (``data.selection_split=test_fold_reference``) or lack a
    class. Metrics record both cut-offs and which was used.
    """
    mode, fixed = threshold_mode(cfg.threshold)
    chosen = None
    if datamodule.selection_split == "validation" and len(datamodule.datasets.get("val", [])) > 0:
        module.collect_validation = True
        try:
            tester.validate(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
        finally:
            module.collect_validation = False
        chosen = youden_threshold(*module.validation_predictions())
    if mode == "validation" and chosen is None:
        raise ConfigError("threshold=validation needs validation patients of both classes, apart from the test fold "
                          "(data.selection_split=validation, data.val_fraction > 0)")
    used = chosen if mode == "validation" else fixed
    module.use_test_threshold(used)
    # unrounded: the calls in predictions.csv (prob > threshold) must follow from the recorded cut-off
    return {"threshold": used, "threshold_mode": mode, "threshold_fixed": fixed, "threshold_validation": chosen}


def _selected_validation(module: ClassificationModule, checkpoint: str | None) -> dict[str, Any]:
    """The epoch of the tested checkpoint and its validation figures (what selection saw), for metrics.json and
    the W&B summary (whose val/* would otherwise be the last epoch's)."""
    if not checkpoint:
        return {"selected_epoch": None, "val": {}}
    epoch = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])
    return {"selected_epoch": epoch, "val": {k: round(v, 4) for k, v in module.val_history.get(epoch, {}).items()}}


def _rank_zero_resume(checkpoints: ModelCheckpoint | None) -> str | None:
    """A DDP child resumes from the checkpoint rank 0 resumes from (rank 0 has set aside any foreign one)."""
    if checkpoints is None or not checkpoints.dirpath:
        return None
    last = Path(checkpoints.dirpath) / LAST_CHECKPOINT
    return str(last) if last.is_file() else None


def _selected_checkpoint(selection: str, best_cb: ModelCheckpoint | None,
                         last_cb: ModelCheckpoint | None) -> str | None:
    """The checkpoint to test: the best on validation (``selection=best``) or the last epoch's."""
    if selection == "best" and best_cb is not None and best_cb.best_model_path:
        return best_cb.best_model_path
    if last_cb is not None and last_cb.best_model_path:  # the last-epoch callback keeps one file, the newest
        return last_cb.best_model_path
    return None


def _single_process_tester(trainer: L.Trainer, cfg: DictConfig) -> L.Trainer | None:
    """The trainer to test with: ``trainer`` itself, or after multi-process training a one-device trainer on
    rank 0 (a DistributedSampler would split and pad the test set); None on the other ranks."""
    if trainer.world_size <= 1:
        return trainer
    rank = trainer.global_rank
    trainer.strategy.barrier("pneumollm-before-test")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # metrics must not try to sync with ranks that have left
    if rank != 0:
        return None
    return L.Trainer(accelerator=cfg.trainer.get("accelerator", "auto"), devices=1,
                     precision=cfg.trainer.get("precision", "32-true"), logger=False, enable_checkpointing=False,
                     enable_model_summary=False, deterministic=cfg.trainer.get("deterministic", False),
                     enable_progress_bar=False, default_root_dir=str(cfg.paths.run_dir))


def _log_summary(trainer: L.Trainer, metrics: dict[str, Any]) -> None:
    """Final figures into the W&B summary: the test metrics, and val/* of the selected checkpoint's epoch."""
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        summary = getattr(experiment, "summary", None)
        if summary is not None:
            summary.update({k: v for k, v in metrics.items() if isinstance(v, int | float | str)})
            summary.update(metrics.get("val") or {})
