"""The Lightning side of a fold run: launch checks, the trainer's settings, callbacks and loggers, fitting and
testing with Ctrl-C turned into a message, and the checkpoint to test."""

from __future__ import annotations

import os
import resource
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf

from pneumollm.errors import ConfigError, Interrupted
from pneumollm.utils.console import say
from pneumollm.utils.quiet import quiet_wandb


def in_multirun() -> bool:
    """Whether this job is one of a Hydra sweep (``-m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def launched_rank() -> int:
    """This process's rank when a launcher started several (DDP children, SLURM tasks); 0 otherwise."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def job_name(cfg: DictConfig) -> str:
    """How messages name a job: ``<arm> fold <k>``."""
    return f"{cfg.experiment.arm} fold {cfg.data.fold}"


def chosen(group: str) -> str:
    """The chosen config of ``group`` (e.g. ``gpu`` for trainer), or ``?`` outside the Hydra app."""
    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get(group, "?"))
    return "?"


def check_launch(cfg: DictConfig) -> None:
    """Refuse a GPU trainer without a GPU, and DDP inside a local sweep: Lightning starts the other ranks by
    re-running the command line, which in a Hydra multirun would start the whole sweep again in every rank."""
    if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        raise ConfigError(f"trainer={chosen('trainer')} needs a CUDA GPU and none is visible; add trainer=cpu to run "
                          "on the CPU (the full size then needs about 16 GB of RAM in bf16, see README 'Running at "
                          "full size')")
    strategy = str(cfg.trainer.get("strategy", "auto"))
    several = str(cfg.trainer.get("devices", 1)) not in ("1", "auto")
    managed = int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1  # SLURM starts every rank itself
    if strategy.startswith("ddp") and several and in_multirun() and not managed:
        raise ConfigError("trainer=ddp cannot run inside a local sweep (-m): run one fold at a time without -m "
                          "(data.fold=k), or sweep on SLURM with hydra/launcher=slurm_ddp")


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


def instantiate_callbacks(node: DictConfig | None) -> dict[str, Any]:
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


def build_loggers(cfg: DictConfig, chash: str) -> list[Any]:
    """The configured loggers (``logger``); one that cannot start is left out with a warning."""
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


def log_summary(trainer: L.Trainer, metrics: dict[str, Any]) -> None:
    """Final figures into the W&B summary: the test metrics, and val/* of the selected checkpoint's epoch."""
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        summary = getattr(experiment, "summary", None)
        if summary is not None:
            summary.update({k: v for k, v in metrics.items() if isinstance(v, int | float | str)})
            summary.update(metrics.get("val") or {})


def finish_wandb() -> None:
    """End this process's W&B run, if one is open."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:
        pass


def peak_memory_mb() -> tuple[float, str]:
    """(peak memory in MiB, what was measured): CUDA's max allocated, or the process's max resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "host_max_rss_process"


@contextmanager
def named_interrupt(trainer: L.Trainer, job: str) -> Iterator[None]:
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


def fit(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, resume: str | None,
        job: str) -> None:
    """``trainer.fit``, resuming from ``resume`` (our own checkpoint: Lightning's warning that its folder is not
    empty says nothing then)."""
    with warnings.catch_warnings(), named_interrupt(trainer, job):
        if resume is not None:
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)


def checkpoint_dir(*callbacks: ModelCheckpoint | None) -> str | None:
    """The folder of the first checkpoint callback given (where ``last.ckpt`` is kept), or None."""
    found = next((c for c in callbacks if c is not None), None)
    return found.dirpath if found is not None and found.dirpath else None


def selected_checkpoint(selection: str, best_cb: ModelCheckpoint | None,
                        last_cb: ModelCheckpoint | None) -> str | None:
    """The checkpoint to test: the best on validation (``selection=best``) or the last epoch's."""
    if selection == "best" and best_cb is not None and best_cb.best_model_path:
        return best_cb.best_model_path
    if last_cb is not None and last_cb.best_model_path:  # the last-epoch callback keeps one file, the newest
        return last_cb.best_model_path
    return None


def single_process_tester(trainer: L.Trainer, cfg: DictConfig) -> L.Trainer | None:
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
