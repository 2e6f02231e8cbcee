"""Figures of a table's arms: ROC curves with patient-bootstrap bands, a metric against a swept setting, t-SNE of
one fold's features, a panel of test films with every arm's call."""

from __future__ import annotations

import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from sklearn.manifold import TSNE

from pneumollm.analysis.collect import ArmRuns
from pneumollm.analysis.plotting import ARM_COLOURS
from pneumollm.analysis.plotting import panel_grid as _grid
from pneumollm.analysis.plotting import save_figure as _save
from pneumollm.analysis.stats import Interval, patient_resamples
from pneumollm.analysis.summary import ArmSummary
from pneumollm.analysis.wording import probability_name
from pneumollm.data.targets import BINARY_CLASSES

RIGHT, WRONG = "#1a1a1a", "#c0182a"  # the colours of a right and a wrong call in the film panel


# --- ROC with a patient-level bootstrap band ------------------------------------------------------------------


def roc_points(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The empirical ROC's vertices (FPR, TPR) from (0, 0) to (1, 1), tied scores in one step (as sklearn's)."""
    order = np.argsort(-probs, kind="mergesort")
    p, y = probs[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]
    tps = np.cumsum(y)[last_of_tie].astype(np.float64)
    fps = (last_of_tie + 1) - tps
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def roc_at(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TPR of the ROC polyline through ``(fpr, tpr)`` at each FPR of ``grid`` (the top of a vertical step)."""
    right = np.searchsorted(fpr, grid, side="right")  # the first vertex beyond x
    left = right - 1  # the last vertex at or before x: the highest TPR reached at that FPR
    right = np.minimum(right, len(fpr) - 1)
    f0, f1, t0, t1 = fpr[left], fpr[right], tpr[left], tpr[right]
    span = np.where(f1 > f0, f1 - f0, 1.0)
    weight = np.where(f1 > f0, (grid - f0) / span, 0.0)
    return t0 + weight * (t1 - t0)


@dataclass(frozen=True)
class RocBand:
    """A ROC curve on an FPR grid with a pointwise bootstrap band of its TPR."""

    fpr: np.ndarray  # the grid
    tpr: np.ndarray  # the curve of all predictions at the grid
    low: np.ndarray
    high: np.ndarray
    resamples: int  # bootstrap resamples the band comes from
    patients: int


def roc_band_by_patient(labels: Sequence[int], probs: Sequence[float], patients: Sequence[str],
                        n_boot: int = 1000, confidence: float = 0.95, grid_points: int = 101,
                        seed: int = 0) -> RocBand | None:
    """Pointwise ``confidence`` band of the TPR over an FPR grid from resampling *patients* with replacement.

    A patient's films are drawn together (they are correlated), as in ``stats.bootstrap_auc_by_patient``;
    resamples with a single class are redrawn. None when the predictions hold one class only.
    """
    y, p = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return None
    grid = np.linspace(0.0, 1.0, grid_points)
    curves = [roc_at(*roc_points(y[idx], p[idx]), grid)
              for idx in patient_resamples(patients, n_boot, seed, valid=lambda idx: y[idx].min() != y[idx].max())]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(np.stack(curves), [alpha, 1 - alpha], axis=0)
    return RocBand(grid, roc_at(*roc_points(y, p), grid), low, high, len(curves), len(set(patients)))


def plot_roc(arms: Sequence[ArmRuns], summaries: Sequence[ArmSummary], path: Path, title: str,
             intervals: Sequence[Interval] | None = None, n_boot: int = 1000) -> Path:
    """One panel per arm: its pooled out-of-fold ROC with a 95 % patient-bootstrap band (shaded), the other arms'
    curves in grey behind it. ``intervals``: each arm's pooled AUC with its interval, for the panel's legend."""
    curves = []
    for k, (arm, summary) in enumerate(zip(arms, summaries)):
        y = np.array([p.label for p in arm.predictions], dtype=np.int64)
        prob = np.array([p.prob for p in arm.predictions], dtype=np.float64)
        band = roc_band_by_patient(y, prob, [p.patient_id for p in arm.predictions], n_boot=n_boot)
        if band is not None:
            interval = intervals[k] if intervals is not None else None
            curves.append((summary.label, roc_points(y, prob), band, interval, summary.pooled_auc))
    rows, cols = _grid(max(1, len(curves)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.9 * rows + 0.5), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    fig.get_layout_engine().set(h_pad=0.08, w_pad=0.05)
    for k, (ax, (label, (fpr, tpr), band, interval, auc)) in enumerate(zip(axes.ravel(), curves)):
        colour = ARM_COLOURS[k % len(ARM_COLOURS)]
        for j, (_, (other_fpr, other_tpr), *_rest) in enumerate(curves):
            if j != k:
                ax.plot(other_fpr, other_tpr, c="0.72", lw=0.7, zorder=1)
        ax.fill_between(band.fpr, band.low, band.high, color=colour, alpha=0.25, lw=0, zorder=2)
        ax.plot(fpr, tpr, c=colour, lw=1.6, zorder=3)
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.7, zorder=0)
        auc_text = interval.format(1) if interval is not None else f"{auc:.1f}"
        ax.text(0.97, 0.04, f"AUC {auc_text}\n{band.patients} patients", transform=ax.transAxes, ha="right",
                va="bottom", fontsize=7.5, bbox={"fc": "white", "ec": "none", "alpha": 0.85, "pad": 1.5})
        ax.set_title(label, fontsize=9)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("1 − specificity", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("sensitivity", fontsize=8)
    for ax in axes.ravel()[len(curves):]:
        ax.axis("off")
    resamples = curves[0][2].resamples if curves else n_boot
    notes = [f"shaded: pointwise 95% band of sensitivity from {resamples} bootstrap resamples of patients"]
    notes += ["grey: the other arms"] if len(curves) > 1 else []
    lines = [title, *notes] if cols <= 2 else [title, "; ".join(notes)]
    fig.suptitle("\n".join(textwrap.fill(line, 50 * cols) for line in lines), fontsize=9)
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


# --- t-SNE of one fold ----------------------------------------------------------------------------------------


def plot_tsne(features: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str, seed: int = 0,
              class_names: Sequence[str] = BINARY_CLASSES) -> Path:
    """t-SNE of each arm's head-input features of its test films, coloured by label (paper Fig. 5; the legend
    names the classes by ``class_names``).

    Each arm's features must come from one model (one fold's run): different folds' models have different
    feature spaces, so the caller picks the fold and says which in ``title``.
    """
    names = list(features)
    rows, cols = _grid(len(names))
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.8 * rows + 0.4), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        x, y = features[name]
        ax.set_xticks([])
        ax.set_yticks([])
        if len(x) < 5:  # t-SNE needs more points than its perplexity
            ax.set_title(f"{name} ({len(x)} films)", fontsize=9)
            ax.text(0.5, 0.5, "too few films", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            continue
        perplexity = max(2.0, min(30.0, (len(x) - 1) / 3))
        embedded = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(
            x.astype(np.float64))
        for label, colour, text in ((0, "tab:blue", class_names[0]), (1, "tab:red", class_names[1])):
            mask = y == label
            ax.scatter(embedded[mask, 0], embedded[mask, 1], s=10, c=colour, label=text, alpha=0.8, lw=0)
        ax.set_title(f"{name} ({len(x)} films)", fontsize=9)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], ls="", marker="o", ms=5, c=c, label=t)
               for c, t in (("tab:blue", class_names[0]), ("tab:red", class_names[1]))]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, path)


# --- the film panel -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One arm's prediction for one film, and the threshold of the run that made it."""

    prob: float
    threshold: float = 0.5

    @property
    def positive(self) -> bool:
        return self.prob > self.threshold  # as the run's metrics (torchmetrics: preds > threshold)


@dataclass(frozen=True)
class PanelFilm:
    """A film chosen for the panel."""

    image_id: str
    label: int
    fold: int
    file: Path | None = None


def _error(call: Call, label: int) -> str | None:
    if call.positive == bool(label):
        return None
    return "false positive" if call.positive else "false negative"


def select_panel_films(films: Mapping[str, tuple[int, int]], calls: Mapping[str, Mapping[str, Call]],
                       max_films: int = 8) -> list[tuple[str, int, int]]:
    """Films for the panel as (image_id, label, fold), from ``films`` (image_id -> (label, fold)).

    First the arms' errors: each arm's false positives and false negatives are covered by at least one film
    where the budget allows (greedily, the film wrong for most uncovered (arm, kind) pairs, most confident error
    first). Then films every arm gets right, alternating the two classes and spread over folds.
    """
    errors: dict[str, set[tuple[str, str]]] = defaultdict(set)  # film -> (arm, kind) it shows
    margin: dict[str, float] = defaultdict(float)  # film -> summed distance of its wrong calls from the threshold
    for arm, by_film in calls.items():
        for image_id, call in by_film.items():
            if image_id in films and (kind := _error(call, films[image_id][0])):
                errors[image_id].add((arm, kind))
                margin[image_id] += abs(call.prob - call.threshold)
    uncovered = set().union(*errors.values()) if errors else set()
    labels_present = {label for label, _ in films.values()}
    error_budget = max(1, max_films - len(labels_present)) if len(films) > 1 else max_films
    chosen: list[str] = []
    while uncovered and len(chosen) < error_budget:
        best = max((f for f in errors if f not in chosen and errors[f] & uncovered),
                   key=lambda f: (len(errors[f] & uncovered), margin[f], f), default=None)
        if best is None:
            break
        chosen.append(best)
        uncovered -= errors[best]

    def confidence(image_id: str) -> float:
        found = [abs(c[image_id].prob - c[image_id].threshold) for c in calls.values() if image_id in c]
        return float(np.mean(found)) if found else 0.0

    right = {label: sorted((f for f, (lab, _) in films.items() if lab == label and f not in errors),
                           key=lambda f: (-confidence(f), f)) for label in sorted(labels_present)}
    per_fold: dict[int, int] = defaultdict(int)
    for f in chosen:
        per_fold[films[f][1]] += 1
    label_cycle = sorted(labels_present)
    exhausted: set[int] = set()
    turn = 0
    while len(chosen) < min(max_films, len(films)) and len(exhausted) < len(label_cycle):
        label = label_cycle[turn % len(label_cycle)]
        turn += 1
        pool = [f for f in right[label] if f not in chosen]
        if not pool:  # every film of this class is wrong for some arm: show one of those
            pool = [f for f, (lab, _) in sorted(films.items()) if lab == label and f not in chosen]
        if not pool:
            exhausted.add(label)
            continue
        pick = min(pool, key=lambda f: per_fold[films[f][1]])  # the least shown fold, most confident first
        chosen.append(pick)
        per_fold[films[pick][1]] += 1
    ordered = sorted(chosen, key=lambda f: (films[f][0], f in errors, films[f][1], f))
    return [(f, films[f][0], films[f][1]) for f in ordered]


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def film_panel_title(title: str, class_names: Sequence[str] = BINARY_CLASSES, cut: str = "0.5") -> str:
    """The film panel's title: ``title``, then what the numbers are (P(class 1) in %) and what the marks mean."""
    return f"{title}\n{probability_name(class_names)} in % per arm; red ✗: wrong at the run's threshold ({cut})"


def plot_film_panel(films: Sequence[PanelFilm], calls: Mapping[str, Mapping[str, Call]], path: Path,
                    title: str, max_cols: int = 4, class_names: Sequence[str] = BINARY_CLASSES) -> Path:
    """Test films with every arm's P(class 1) in percent, wrong calls in red (paper Fig. 4); each film headed by
    its class in ``class_names`` (label 0, label 1).

    ``calls``: arm label -> image_id -> the arm's call on that film.
    """
    rows, cols = _grid(len(films), max_cols)
    n_arms = max(1, len(calls))
    col_in, head_in, line_in, top_in = 2.5, 0.42, 0.17, 0.6
    image_in = col_in - 0.1
    text_in = line_in * n_arms + 0.12
    height = rows * (head_in + image_in + text_in) + top_in
    fig = plt.figure(figsize=(col_in * cols, height))
    grid = fig.add_gridspec(3 * rows, cols, height_ratios=[head_in, image_in, text_in] * rows, hspace=0.0,
                            wspace=0.08, left=0.01, right=0.99, bottom=0.0, top=1 - top_in / height)
    name_width = 22
    for k, film in enumerate(films):
        r, c = divmod(k, cols)
        head, ax, text = (fig.add_subplot(grid[3 * r + i, c]) for i in range(3))
        wrong = sum(1 for by_film in calls.values()
                    if film.image_id in by_film and _error(by_film[film.image_id], film.label))
        short = "/".join(Path(film.image_id).parts[-2:])
        head.axis("off")
        head.text(0.5, 0.12, f"{class_names[1] if film.label else class_names[0]} · fold {film.fold}\n"
                  f"{_short(short, 22)} · wrong for {wrong}/{len(calls)}", fontsize=8.5, ha="center", va="bottom",
                  color=WRONG if wrong else RIGHT, transform=head.transAxes, linespacing=1.3)
        if film.file is not None:
            with Image.open(film.file) as img:
                ax.imshow(np.asarray(img.convert("L")), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set(color=WRONG if wrong else "0.6", lw=1.8 if wrong else 0.6)
        text.axis("off")
        text.set(xlim=(0, 1), ylim=(0, n_arms + 0.5))
        for i, (arm, by_film) in enumerate(calls.items()):
            y = n_arms - i - 0.2
            call = by_film.get(film.image_id)
            if call is None:
                shown, colour = "–", "0.5"
            else:
                bad = _error(call, film.label) is not None
                shown, colour = f"{100 * call.prob:5.1f} {'✗' if bad else '✓'}", WRONG if bad else RIGHT
            text.text(0.02, y, _short(arm, name_width), fontsize=8, va="center", ha="left", color=colour)
            text.text(0.98, y, shown, fontsize=8, va="center", ha="right", color=colour, family="DejaVu Sans Mono",
                      weight="bold" if colour == WRONG else "normal")
    thresholds = sorted({call.threshold for by_film in calls.values() for call in by_film.values()})
    cut = f"{thresholds[0]:g}" if len(thresholds) == 1 else "each run's own"
    fig.suptitle(film_panel_title(title, class_names, cut), fontsize=10, y=1 - 0.06 / height, va="top")
    return _save(fig, path)
