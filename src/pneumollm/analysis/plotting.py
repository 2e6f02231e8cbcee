"""What every figure of the suite shares: matplotlib without a display, the arms' colours, a grid of panels,
saving a PNG atomically."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pneumollm.utils.io import atomic_write

ARM_COLOURS = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9", "navy", "olive", "teal")  # no grey


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG (150 dpi, atomically) and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def panel_grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, columns) of a grid for ``n`` panels, at most ``max_cols`` wide."""
    cols = max(1, min(max_cols, n))
    return math.ceil(n / cols), cols
