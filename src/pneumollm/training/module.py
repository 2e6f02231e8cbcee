"""The LightningModule: loss, AdamW with decay groups, the per-iteration schedule, and the paper's metrics."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryRecall, BinarySpecificity

from pneumollm.data.datamodule import ANY, IMAGE, INDEX, LABEL
from pneumollm.data.targets import LabelTask
from pneumollm.models.base import ImageClassifier
from pneumollm.models.components.frozen import frozen_tensor_fingerprints
from pneumollm.training.losses import ClassificationLoss, positive_log_odds
from pneumollm.training.optim import weight_decay_groups
from pneumollm.training.prediction_metrics import prediction_metrics, stage_confusion
from pneumollm.training.recalibration import Recalibration
from pneumollm.training.run_folder import RUN_IDENTITY_KEY

METRIC_NAMES = ("sensitivity", "specificity", "accuracy", "auc")


def paper_metrics(threshold: float = 0.5) -> MetricCollection:
    """Sensitivity (recall of pneumoconiosis), specificity, accuracy and AUC on P(pneumoconiosis)."""
    return MetricCollection({
        "sensitivity": BinaryRecall(threshold=threshold),
        "specificity": BinarySpecificity(threshold=threshold),
        "accuracy": BinaryAccuracy(threshold=threshold),
        "auc": BinaryAUROC(),
    })


def frozen_fingerprint(model: torch.nn.Module) -> str:
    """One fingerprint of all frozen weights (shape and first values of each): what checkpoints carried before
    per-tensor fingerprints (``frozen_tensor_fingerprints``), kept to check those checkpoints."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if param.requires_grad or param.device.type == "meta":
            continue
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(param.detach().flatten()[:16].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def frozen_mismatch(net: torch.nn.Module, checkpoint: dict[str, Any], current: dict[str, str] | None = None
                    ) -> str | None:
    """Why the frozen weights of ``net`` are not the ones ``checkpoint`` was trained with, or None when they are
    (or the checkpoint recorded none). Checked tensor by tensor (``frozen_fingerprints``; ``current``: the net's
    own, when already computed); checkpoints written before those carry one fingerprint of all
    (``frozen_fingerprint``)."""
    recorded = checkpoint.get("frozen_fingerprints")
    if recorded:
        current = frozen_tensor_fingerprints(net) if current is None else current
        for name, expected in recorded.items():
            if name not in current:
                return f"the base model has no frozen tensor {name!r} that the trained model had"
            if current[name] != expected:
                what = "shape" if current[name].split(":")[0] != expected.split(":")[0] else "values"
                return (f"the base weights differ from the ones recorded at training time ({what} of {name}: "
                        f"{current[name]} vs {expected})")
        return None
    legacy = checkpoint.get("frozen_fingerprint")
    if legacy and legacy != frozen_fingerprint(net):
        return "the base weights differ from the ones recorded at training time (their fingerprint)"
    return None


def _numpy_state_to_tensors() -> dict[str, Any]:
    """NumPy's RNG state in types that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_tensors(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["kind"], keys, state["pos"], state["has_gauss"], state["cached"]


class ClassificationModule(L.LightningModule):
    """Trains an ``ImageClassifier`` fold by fold and reports the paper's metrics in percent.

    Only parameters with ``requires_grad`` are optimised and checkpointed; frozen weights are rebuilt
    from their source (pretrained files or a seeded random initialisation) and checked by fingerprint.
    """

    def __init__(
        self,
        net: ImageClassifier,
        loss: ClassificationLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        weight_decay: float = 0.02,
        threshold: float = 0.5,
        save_features: bool = False,
        run_identity: dict[str, Any] | None = None,
        log_every_step: bool = False,
        task: LabelTask | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.weight_decay = weight_decay
        self.threshold = threshold
        self.save_features = save_features
        self.run_identity = dict(run_identity or {})
        self.from_prefix = False  # batches carry the frozen prefix's cached features instead of images
        self.log_every_step = log_every_step  # the training loss per step too (costs 5-30 % of a tiny fold)
        self._frozen_prints: dict[str, str] | None = None  # frozen weights never change: fingerprint them once
        self.val_history: dict[int, dict[str, float]] = {}  # epoch -> validation figures (kept in checkpoints)
        self.strict_loading = False  # checkpoints hold the trainable weights only
        self.val_metrics = paper_metrics(threshold).clone(prefix="val/")
        self.task = task or LabelTask()
        self._val_losses: list[torch.Tensor] = []
        self._test_rows: list[tuple[torch.Tensor, ...]] = []
        self.test_confusion: list[list[int]] | None = None  # staged tasks: true stage x predicted stage
        self.collect_validation = False  # keep the validation films' predictions (threshold, recalibration)
        self._val_rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.recalibration: Recalibration | None = None  # applied to the test predictions (calibration=...)
        self._test_features: list[torch.Tensor] = []
        self.test_predictions: dict[str, np.ndarray] = {}
        self.test_results: dict[str, float] = {}

    def frozen_prints(self) -> dict[str, str]:
        """Per-tensor fingerprints of the frozen weights (computed once: they never change)."""
        if self._frozen_prints is None:
            self._frozen_prints = frozen_tensor_fingerprints(self.net)
        return self._frozen_prints

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net.forward_from_prefix(inputs)[0] if self.from_prefix else self.net(inputs)

    def _logits_and_features(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.forward_from_prefix(inputs) if self.from_prefix else self.net.forward_with_features(inputs)

    def has_trainable_parameters(self) -> bool:
        return any(p.requires_grad for p in self.net.parameters())

    # ---- steps -------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self._logits(batch[IMAGE])
        loss = self.loss_fn(logits.float(), batch[LABEL])
        self.log("train/loss", loss, on_step=self.log_every_step, on_epoch=True, prog_bar=True,
                 batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self._logits(batch[IMAGE]).float()
        self._val_losses.append(self.loss_fn(logits, batch[LABEL]).detach() * len(logits))
        probs = self.loss_fn.positive_probability(logits)
        self.val_metrics.update(probs, batch[ANY])
        if self.collect_validation:
            self._val_rows.append((batch[ANY].detach().cpu(), probs.detach().cpu(),
                                   positive_log_odds(self.loss_fn, logits).detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val_losses:
            return
        count = len(self.trainer.datamodule.datasets["val"]) if self.trainer.datamodule else 1
        val_loss = torch.stack(self._val_losses).sum() / max(1, count)
        self.log("val/loss", val_loss, prog_bar=False)
        self._val_losses.clear()
        values = self._percent(self.val_metrics.compute(), "val/")
        self.val_metrics.reset()
        if not self.trainer.sanity_checking:
            self.val_history[int(self.current_epoch)] = {"val/loss": float(val_loss),
                                                         **{k: float(v) for k, v in values.items()}}
        avg = values.pop("val/avg")
        self.log_dict(values, prog_bar=False)
        self.log("val/avg", avg, prog_bar=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.save_features:
            logits, features = self._logits_and_features(batch[IMAGE])
            self._test_features.append(features.float().flatten(1).detach().cpu())
        else:
            logits = self._logits(batch[IMAGE])
        logits = logits.float()
        probs = self.loss_fn.positive_probability(logits)
        outputs = self.loss_fn.output_probabilities(logits)
        log_odds = positive_log_odds(self.loss_fn, logits)
        self._test_rows.append((batch[INDEX].detach().cpu(), batch[ANY].detach().cpu(), probs.detach().cpu(),
                                batch[LABEL].detach().cpu(), outputs.detach().cpu(), log_odds.detach().cpu()))

    def on_test_epoch_end(self) -> None:
        """Gather the test films' predictions and compute the test figures from them with the function every
        table uses (``prediction_metrics``), on exactly the numbers ``predictions.csv`` receives."""
        index, label, prob, target, outputs, log_odds = (torch.cat(parts).numpy() for parts in zip(*self._test_rows))
        raw = {}
        if self.recalibration is not None:  # the model's own numbers kept beside the recalibrated ones
            raw = {"prob_raw": prob, "logit_raw": log_odds}
            prob, log_odds = self.recalibration.apply(log_odds)
        self.test_predictions = {"index": index, "label": label, "prob": prob, "target": target, "outputs": outputs,
                                 "logit": log_odds, **raw}
        figures = prediction_metrics(label, prob, self.threshold, self.task, target, outputs, logits=log_odds)
        self.test_confusion = stage_confusion(self.task, target, outputs)
        self.test_results = {f"test/{k}": v for k, v in figures.items()}
        self.log_dict({k: v for k, v in self.test_results.items() if np.isfinite(v)})
        if self._test_features:
            self.test_predictions["features"] = torch.cat(self._test_features).numpy()
        self._test_rows.clear()
        self._test_features.clear()

    def validation_predictions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels, P(pneumoconiosis), its log-odds) of the validation films collected while
        ``collect_validation`` was on."""
        if not self._val_rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0)
        labels, probs, log_odds = (torch.cat(parts).numpy() for parts in zip(*self._val_rows))
        self._val_rows.clear()
        return labels, probs, log_odds

    def use_test_threshold(self, threshold: float) -> None:
        """Compute the test metrics (and the predicted calls) at ``threshold`` instead of the configured one."""
        self.threshold = float(threshold)

    def use_recalibration(self, recalibration: Recalibration | None) -> None:
        """Recalibrate the test predictions (``prob`` and ``logit``; the model's own kept as ``prob_raw`` and
        ``logit_raw``) before any figure is computed from them; None: the model's own."""
        self.recalibration = recalibration

    @staticmethod
    def _percent(values: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        scaled = {k: v.float() * 100.0 for k, v in values.items()}
        scaled[f"{prefix}avg"] = torch.stack([scaled[f"{prefix}{n}"] for n in METRIC_NAMES]).mean()
        return scaled

    # ---- optimisation ------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(weight_decay_groups(self.net, self.weight_decay))
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, int(self.trainer.max_epochs or 1)))
        scheduler = self.scheduler_factory(optimizer, total_steps=total, steps_per_epoch=per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None = None) -> None:
        """timm's schedulers are stepped by iteration count (``step_update``), torch's by ``step()``."""
        if hasattr(scheduler, "step_update"):
            scheduler.step_update(num_updates=self.global_step)
        else:
            super().lr_scheduler_step(scheduler, metric)

    # ---- checkpoints: trainable weights only, plus RNG state for exact resumption ------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {f"net.{n}" for n, p in self.net.named_parameters() if p.requires_grad}
        keep |= {f"net.{n}" for n, _ in self.net.named_buffers()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        # per tensor: resuming and inference refuse other base weights, naming the first tensor that differs
        checkpoint["frozen_fingerprints"] = self.frozen_prints()
        checkpoint[RUN_IDENTITY_KEY] = dict(self.run_identity)  # a run resumes only its own checkpoints
        checkpoint["val_history"] = {str(k): v for k, v in self.val_history.items()}
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state_to_tensors(),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        why = frozen_mismatch(self.net, checkpoint, self.frozen_prints())
        if why is not None:
            raise RuntimeError(f"the checkpoint was trained on different frozen weights than the ones loaded now "
                               f"(another pretrained model, seed or architecture: {why}); refusing to mix them")
        states = checkpoint.get("rng_states")
        self.val_history.update({int(k): dict(v) for k, v in checkpoint.get("val_history", {}).items()})
        if states and self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING:
            torch.set_rng_state(states["torch"])
            if states["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
            np.random.set_state(_numpy_state_from_tensors(states["numpy"]))
            random.setstate(states["python"])
