"""Figures of a table's arms: ROC curves, a metric against a swept setting, t-SNE of features, a film panel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from sklearn.manifold import TSNE
from sklearn.metrics import roc_curve

from pneumollm.analysis.collect import ArmRuns
from pneumollm.analysis.summary import ArmSummary
from pneumollm.utils.io import atomic_write


def _save(fig: plt.Figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def plot_roc(arms: Sequence[ArmRuns], summaries: Sequence[ArmSummary], path: Path, title: str) -> Path:
    """ROC curve of each arm from its pooled out-of-fold predictions."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for arm, summary in zip(arms, summaries):
        labels = np.array([p.label for p in arm.predictions])
        if len(np.unique(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, [p.prob for p in arm.predictions])
        ax.plot(fpr, tpr, lw=1.6, label=f"{summary.label} (AUC {summary.pooled_auc:.1f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_metric_curve(xs: Sequence[float], summaries: Sequence[ArmSummary], x_label: str, path: Path,
                      title: str, metrics: Sequence[str] = ("auc", "avg")) -> Path:
    """Mean ± std over folds of ``metrics`` against a swept setting (e.g. the number of diagnosis tokens)."""
    order = np.argsort(xs)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k, metric in enumerate(metrics):
        mean = np.array([summaries[i].mean[metric] for i in order])
        std = np.array([summaries[i].std[metric] for i in order])
        shift = 0.06 * (k - (len(metrics) - 1) / 2)  # side by side, so the error bars do not hide each other
        ax.errorbar(np.asarray(xs, dtype=float)[order] + shift, mean, yerr=np.nan_to_num(std), marker="o",
                    capsize=3, label=metric.upper())
    ax.set(xlabel=x_label, ylabel="percent (mean ± std over folds)", title=title)
    ax.legend()
    return _save(fig, path)


def plot_tsne(features: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str, seed: int = 0) -> Path:
    """t-SNE of each arm's head-input features of its test films, coloured by label (paper Fig. 5)."""
    names = list(features)
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        x, y = features[name]
        perplexity = max(2.0, min(30.0, (len(x) - 1) / 3))
        embedded = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(
            x.astype(np.float64))
        for label, colour, text in ((0, "tab:blue", "normal"), (1, "tab:red", "pneumoconiosis")):
            mask = y == label
            ax.scatter(embedded[mask, 0], embedded[mask, 1], s=8, c=colour, label=text, alpha=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_film_panel(films: Sequence[tuple[str, int, Path]], probabilities: dict[str, dict[str, float]],
                    path: Path, title: str) -> Path:
    """Test films with every arm's P(pneumoconiosis) in percent, ✓ where the arm is right (paper Fig. 4)."""
    # Size the figure so the films sit right under the title and every arm's line fits below them.
    text_in = 0.13 * len(probabilities) + 0.25
    height = 0.75 + 2.5 + text_in
    fig, axes = plt.subplots(1, len(films), figsize=(2.6 * len(films), height), squeeze=False)
    fig.subplots_adjust(top=1 - 0.75 / height, bottom=text_in / height, left=0.02, right=0.98, wspace=0.1)
    for ax, (image_id, label, file) in zip(axes.ravel(), films):
        with Image.open(file) as img:
            ax.imshow(np.asarray(img.convert("L")), cmap="gray")
        short = "/".join(Path(image_id).parts[-2:])
        ax.set_title(f"{'pneumoconiosis' if label else 'normal'}\n{short}", fontsize=8)
        ax.axis("off")
        lines = []
        for arm, probs in probabilities.items():
            if image_id in probs:
                prob = probs[image_id]
                lines.append(f"{arm}: {100 * prob:.1f} {'✓' if (prob > 0.5) == bool(label) else '✗'}")
        ax.text(0.0, -0.05, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=6.5, family="monospace")
    fig.suptitle(title)
    return _save(fig, path)
