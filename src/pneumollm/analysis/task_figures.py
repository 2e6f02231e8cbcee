"""Figures of staged and multi-label tables: each arm's pooled confusion matrix, and each arm's one-vs-rest ROC
curve per stage (or per finding). Drawn with scikit-learn's display classes."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pneumollm.analysis.collect import ArmRuns
from pneumollm.analysis.figures import _grid, _save
from pneumollm.analysis.summary import ArmSummary
from pneumollm.data.targets import MULTICLASS


def plot_confusion_matrices(summaries: Sequence[ArmSummary], path: Path, title: str) -> Path | None:
    """One panel per staged arm: its pooled out-of-fold confusion matrix (films; rows true stage, columns the
    most probable stage), shaded by the share of each true stage's films. None when no arm is staged."""
    from sklearn.metrics import ConfusionMatrixDisplay

    staged = [s for s in summaries if s.task is not None and s.task.confusion is not None]
    if not staged:
        return None
    rows, cols = _grid(len(staged), max_cols=3)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.1 * rows + 0.6), squeeze=False, layout="constrained")
    for ax, s in zip(axes.ravel(), staged):
        counts = np.asarray(s.task.confusion)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        display = ConfusionMatrixDisplay(counts, display_labels=list(s.task.task.classes))
        display.plot(ax=ax, colorbar=False, cmap="Blues", values_format="d")
        display.im_.set_array(shares)  # colour by row share, print the counts
        display.im_.set_clim(0, 1)
        for (i, j), text in np.ndenumerate(display.text_):
            text.set_color("white" if shares[i, j] > 0.55 else "black")
            text.set_fontsize(8)
        kappa = s.task.pooled["kappa"]
        ax.set_title(f"{s.label}\nκ {kappa.format(2)}", fontsize=8.5)
        ax.set_xlabel("most probable stage", fontsize=8)
        ax.set_ylabel("true stage", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(staged):]:
        ax.axis("off")
    fig.suptitle(textwrap.fill(f"{title} (films; shading: share of the true stage's films)", 45 * cols),
                 fontsize=9)
    return _save(fig, path)


def plot_output_rocs(arms: Sequence[ArmRuns], summaries: Sequence[ArmSummary], path: Path,
                     title: str) -> Path | None:
    """One panel per staged or multi-label arm: the pooled out-of-fold one-vs-rest ROC curve of each stage (or
    each finding), with its AUC in the legend. None when every arm is binary."""
    from sklearn.metrics import RocCurveDisplay

    chosen = [(a, s) for a, s in zip(arms, summaries) if s.task is not None]
    if not chosen:
        return None
    rows, cols = _grid(len(chosen), max_cols=3)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.3 * rows + 0.5), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    for ax, (arm, s) in zip(axes.ravel(), chosen):
        task = s.task.task
        probs = np.array([p.outputs for p in arm.predictions], dtype=np.float64)
        if task.task == MULTICLASS:
            stages = np.array([p.target[0] for p in arm.predictions])
            truth = np.stack([stages == k for k in range(task.num_outputs)], axis=1).astype(int)
            names = [f"stage {c}" for c in task.classes]
        else:
            truth = np.array([p.target for p in arm.predictions], dtype=int)
            names = list(task.label_columns)
        for k, name in enumerate(names):
            if 0 < truth[:, k].sum() < len(truth):
                RocCurveDisplay.from_predictions(truth[:, k], probs[:, k], ax=ax, name=name,
                                                 plot_chance_level=k == len(names) - 1)
        ax.set_title(s.label, fontsize=9)
        ax.set_xlabel("1 − specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        ax.legend(fontsize=6.5, loc="lower right")
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(chosen):]:
        ax.axis("off")
    fig.suptitle(textwrap.fill(title, 45 * cols), fontsize=9)
    return _save(fig, path)
