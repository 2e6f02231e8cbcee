"""Predictions of a trained model (one fold or an ensemble of folds) on prepared films, batched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pneumollm.inference.inputs import InputFilm
from pneumollm.inference.models import TrainedModel
from pneumollm.training.records import number_text, predicted_columns
from pneumollm.utils.progress import progress_bar

# prob: the folds' mean P(class 1), written exactly; logit: its log-odds, from the folds' logits
FIRST_COLUMNS = ("path", "prob", "logit", "pred", "status", "reason", "shift")


@dataclass
class FoldScores:
    """Every fold model's scores of N films: P(class 1) [N, folds], each output's probability [N, folds, outputs]
    and the log-odds of P(class 1) from the logits [N, folds]."""

    probs: np.ndarray
    outputs: np.ndarray
    log_odds: np.ndarray

    def mean_log_odds(self) -> np.ndarray:
        """The log-odds of the folds' mean probability [N] (what ``prob`` is for an ensemble)."""
        return ensemble_log_odds(self.log_odds)


def ensemble_log_odds(log_odds: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of p = the mean of the folds' probabilities, from the folds' log-odds z [N, folds] in log
    space (log p_k = -log(1 + e^-z_k)), so it stays finite where p rounds to 0 or 1."""
    z = np.asarray(log_odds, dtype=np.float64).reshape(len(log_odds), -1)
    return np.logaddexp.reduce(-np.logaddexp(0.0, -z), axis=1) - np.logaddexp.reduce(-np.logaddexp(0.0, z), axis=1)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fold_scores(model: TrainedModel, images: np.ndarray, batch_size: int = 32, progress: bool = True) -> FoldScores:
    """Every fold model's scores (``FoldScores``) of uint8 images [N, H, W]; the outputs are the stages' or
    findings' probabilities, the two classes' for a binary model."""
    device = next((p.device for f in model.folds for p in f.net.parameters()), torch.device("cpu"))
    probs = np.zeros((len(images), len(model.folds)), dtype=np.float64)
    log_odds = np.zeros_like(probs)
    outputs: np.ndarray | None = None
    starts = range(0, len(images), batch_size)
    for start in progress_bar(starts, f"predicting {len(images)} films", total=len(starts), enabled=progress):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).unsqueeze(1)
        batch = batch.to(device).float().div_(255.0)
        for k, fold in enumerate(model.folds):
            p, out, z = fold.scores(batch)
            if outputs is None:
                outputs = np.zeros((len(images), len(model.folds), out.shape[-1]), dtype=np.float64)
            probs[start:start + len(batch), k] = p.cpu().numpy()
            outputs[start:start + len(batch), k] = out.cpu().numpy()
            log_odds[start:start + len(batch), k] = z.double().cpu().numpy()
    return FoldScores(probs, outputs if outputs is not None else np.zeros((0, len(model.folds), 0)), log_odds)


def fold_predictions(model: TrainedModel, images: np.ndarray, batch_size: int = 32,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Every fold model's P(pneumoconiosis) [N films, folds] and output probabilities [N, folds, outputs] (the
    stages' or findings'; the two classes' for a binary model) from uint8 images [N, H, W]."""
    scores = fold_scores(model, images, batch_size, progress)
    return scores.probs, scores.outputs


def fold_probabilities(model: TrainedModel, images: np.ndarray, batch_size: int = 32,
                       progress: bool = True) -> np.ndarray:
    """P(pneumoconiosis) of every film for every fold model: [N films, folds] from uint8 images [N, H, W]."""
    return fold_predictions(model, images, batch_size, progress)[0]


def prediction_rows(model: TrainedModel, films: Sequence[InputFilm], probs: np.ndarray,
                    outputs: np.ndarray | None = None, log_odds: np.ndarray | None = None) -> list[dict[str, object]]:
    """One output row per film (prepared or skipped): ``FIRST_COLUMNS``, then for a staged or multi-label model
    its stage or finding columns (``records.predicted_columns``, fold-averaged), then ``prob_fold<k>`` and
    ``prob_std`` for an ensemble, then the manifest's other columns. ``pred`` applies the model's recorded threshold;
    ``shift`` (right after ``reason``) says why a film looks unlike the training films (``inference.shift``).
    ``log_odds``: the folds' log-odds [N, folds] (``FoldScores``) for the ``logit`` column (empty without)."""
    logits = ensemble_log_odds(log_odds) if log_odds is not None and len(log_odds) else None
    rows, index = [], 0
    ensemble = len(model.folds) > 1
    task = model.task
    for film in films:
        row: dict[str, object] = {"path": film.name, "status": film.status, "reason": film.reason, "shift": film.shift}
        if film.status == "ok":
            values = probs[index]
            mean = float(values.mean())
            row.update(prob=number_text(mean), logit=number_text(logits[index]) if logits is not None else "",
                       pred=int(mean > model.threshold))
            if outputs is not None:
                row.update(predicted_columns(task, outputs[index].mean(axis=0)))
            if ensemble:
                row.update({f"prob_fold{f.fold}": number_text(v) for f, v in zip(model.folds, values)})
                row["prob_std"] = number_text(values.std(ddof=1))
            index += 1
        row.update({k: v for k, v in film.extra.items() if k not in row})
        rows.append(row)
    return rows
