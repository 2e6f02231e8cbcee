"""The calibration figures of a table, a summary or an external cohort: each arm's reliability diagram
(``calibration.png``) and the arms' decision curves (``decision_curve.png``, with its numbers in
``decision_curve.csv``). The ``*_figure`` functions build the figure (tests read its axes), ``plot_*`` save it."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pneumollm.analysis.calibration import CalibrationSummary, pooled_cell
from pneumollm.analysis.decision_curve import DecisionCurves, decision_curves, write_decision_csv
from pneumollm.analysis.plotting import ARM_COLOURS, panel_grid, save_figure
from pneumollm.analysis.wording import probability_name
from pneumollm.data.targets import BINARY_CLASSES

HISTOGRAM_BINS = 50  # bins of the histogram of predictions under each reliability diagram


def calibration_figure(labelled: Sequence[tuple[str, CalibrationSummary]], title: str,
                       class_names: Sequence[str] = BINARY_CLASSES) -> plt.Figure:
    """One panel per arm: its pooled reliability curve (share of class 1 against mean P(class 1) in each of the
    ECE's equal-width bins) with its pointwise 95 % patient-bootstrap band, the diagonal, the other arms' curves in
    grey, the pooled figures; below it the histogram of its predictions by class."""
    rows, cols = panel_grid(max(1, len(labelled)))
    fig = plt.figure(figsize=(3.0 * cols, 3.9 * rows + 0.6), layout="constrained")
    grid = fig.add_gridspec(2 * rows, cols, height_ratios=[3, 1] * rows)
    for k, (label, s) in enumerate(labelled):
        r, c = divmod(k, cols)
        ax = fig.add_subplot(grid[2 * r, c])
        hist = fig.add_subplot(grid[2 * r + 1, c], sharex=ax)
        colour = ARM_COLOURS[k % len(ARM_COLOURS)]
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.7, zorder=0, label="ideal")
        for j, (_, other) in enumerate(labelled):
            filled = other.curve.counts > 0
            if j != k:
                ax.plot(other.curve.predicted[filled], other.curve.observed[filled], c="0.75", lw=0.7, zorder=1)
        curve = s.curve
        filled = curve.counts > 0
        banded = filled & ~np.isnan(curve.low)
        if banded.any():
            ax.fill_between(curve.predicted[banded], curve.low[banded], curve.high[banded], color=colour, alpha=0.25,
                            lw=0, zorder=2)
        ax.plot(curve.predicted[filled], curve.observed[filled], c=colour, lw=1.6, marker="o", ms=3.5, zorder=3,
                label=label)
        ax.text(0.03, 0.97, "\n".join(f"{name} {pooled_cell(s, m)}" for name, m in (
            ("Brier", "brier"), ("ECE", "ece"), ("slope", "calibration_slope"),
            ("intercept", "calibration_intercept"))), transform=ax.transAxes, ha="left", va="top", fontsize=6.5,
            bbox={"fc": "white", "ec": "none", "alpha": 0.85, "pad": 1.5})
        ax.set_title(label, fontsize=9)
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02))
        ax.set_ylabel(f"observed share of {class_names[1]}", fontsize=7.5)
        ax.tick_params(labelsize=7, labelbottom=False)
        edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
        hist.hist([s.probs[s.labels == 0], s.probs[s.labels == 1]], bins=edges, stacked=True,
                  color=["tab:blue", "tab:red"], label=list(class_names))
        hist.set_xlabel(f"predicted {probability_name(class_names)}", fontsize=7.5)
        hist.set_ylabel("films", fontsize=7.5)
        hist.tick_params(labelsize=7)
        if k == 0:
            hist.legend(fontsize=6, frameon=False, loc="upper center", ncol=2)
    resamples = max((s.curve.resamples for _, s in labelled), default=0)
    notes = (f"points: the {len(labelled[0][1].curve.counts) if labelled else 10} equal-width bins of the ECE; "
             f"shaded: pointwise 95% band from {resamples} bootstrap resamples of patients; dashed: ideal; "
             "below: histogram of the predictions by class")
    fig.suptitle("\n".join(textwrap.fill(line, 48 * cols) for line in (title, notes)), fontsize=8.5)
    return fig


def plot_calibration(labelled: Sequence[tuple[str, CalibrationSummary]], path: Path, title: str,
                     class_names: Sequence[str] = BINARY_CLASSES) -> Path:
    """Save ``calibration_figure`` to ``path`` (calibration.png)."""
    return save_figure(calibration_figure(labelled, title, class_names), path)


def decision_figure(curves: DecisionCurves, title: str) -> plt.Figure:
    """Net benefit against the threshold probability: each arm, treat all (grey) and treat none (black)."""
    fig, ax = plt.subplots(figsize=(6.0, 4.2), layout="constrained")
    t = curves.thresholds
    ax.plot(t, np.zeros_like(t), c="black", lw=1.0, label="treat none")
    ax.plot(t, curves.treat_all, c="0.55", lw=1.2, label="treat all")
    for k, (label, nb) in enumerate(curves.arms.values()):
        ax.plot(t, nb, c=ARM_COLOURS[k % len(ARM_COLOURS)], lw=1.5, label=label)
    top = max(curves.prevalence, 0.01)
    ax.set(xlim=(0, 1), ylim=(-0.25 * top - 0.01, 1.15 * top + 0.01), xlabel="threshold probability",
           ylabel="net benefit")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(textwrap.fill(f"{title} (prevalence {curves.prevalence:.2f}; net benefit = TP/n − FP/n · "
                               "pt/(1 − pt))", 80), fontsize=8.5)
    return fig


def plot_decision_curve(curves: DecisionCurves, path: Path, title: str) -> Path:
    """Save ``decision_figure`` to ``path`` (decision_curve.png)."""
    return save_figure(decision_figure(curves, title), path)


def write_calibration_outputs(arms: Sequence[tuple[str, str, CalibrationSummary]], out_dir: Path, title: str,
                              class_names: Sequence[str] = BINARY_CLASSES) -> list[Path]:
    """``calibration.png``, ``decision_curve.csv`` and ``decision_curve.png`` of arms given as (id, label,
    calibration) in ``out_dir``, from the pooled predictions each calibration holds; none without arms.
    ``class_names``: the words of label 0 and label 1, for the titles and the histogram's legend."""
    if not arms:
        return []
    out_dir = Path(out_dir)
    curves = decision_curves([(arm, label, s.labels, s.probs) for arm, label, s in arms])
    return [plot_calibration([(label, s) for _, label, s in arms], out_dir / "calibration.png",
                             f"{title}: calibration of {probability_name(class_names)}", class_names),
            write_decision_csv(curves, out_dir / "decision_curve.csv"),
            plot_decision_curve(curves, out_dir / "decision_curve.png", f"{title}: decision curves")]
