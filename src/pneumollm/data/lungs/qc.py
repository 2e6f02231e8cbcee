"""Quality-control sheets: a grid of films with the lung outline and the crop rectangle drawn on them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from skimage.transform import resize

from pneumollm.data.lungs.components import resize_mask
from pneumollm.data.lungs.crop import Box

MASK_COLOUR = "#39ff14"
BOX_COLOUR = "#ffd60a"
THUMBNAIL_SIDE = 384  # films are shrunk to this long side before drawing (keeps sheets small and fast)


@dataclass(frozen=True)
class QCItem:
    """One tile of a QC sheet: the 8-bit film, its lung mask and crop box (film pixels), and a title."""

    image: np.ndarray
    mask: np.ndarray | None = None
    box: Box | None = None
    title: str = ""


def _as_item(item: QCItem | Mapping[str, Any]) -> QCItem:
    if isinstance(item, QCItem):
        return item
    return QCItem(image=item["image"], mask=item.get("mask"), box=item.get("box"), title=str(item.get("title", "")))


def _thumbnail(item: QCItem) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...] | None]:
    """The film, mask and box shrunk together so the film's long side is at most THUMBNAIL_SIDE."""
    image = np.asarray(item.image)
    if image.ndim != 2:
        raise ValueError(f"QC sheet {item.title!r}: expected a 2-D greyscale film, got shape {image.shape}")
    scale = min(1.0, THUMBNAIL_SIDE / max(image.shape))
    mask, box = item.mask, item.box
    if mask is not None and mask.shape != image.shape:
        raise ValueError(f"QC sheet {item.title!r}: mask shape {mask.shape} differs from the film's {image.shape}")
    if scale < 1.0:
        shape = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
        image = resize(image, shape, anti_aliasing=True, preserve_range=True)
        mask = resize_mask(mask, shape) if mask is not None else None
    scaled_box = tuple(value * scale for value in box) if box is not None else None
    return image, mask, scaled_box


def _shorten(title: str, limit: int = 60) -> str:
    """Each line of ``title`` cut to ``limit`` characters, keeping its end (the file name in a long path)."""
    return "\n".join(line if len(line) <= limit else "..." + line[-(limit - 3) :] for line in title.splitlines())


def write_qc_sheet(
    items: Iterable[QCItem | Mapping[str, Any]],
    path: str | Path,
    columns: int = 6,
    tile_inches: float = 2.6,
    dpi: int = 110,
) -> Path:
    """Draw each film (greyscale) with its lung-mask outline (green) and crop rectangle (yellow) into a PNG grid.

    ``items`` are :class:`QCItem` or mappings with the keys ``image``, ``mask``, ``box``, ``title``
    (the title typically holds the image id, label and crop status). Returns the written path.
    """
    tiles = [_as_item(item) for item in items]
    if not tiles:
        raise ValueError(f"QC sheet {path}: no films to draw")
    if columns < 1:
        raise ValueError(f"QC sheet {path}: columns must be >= 1, got {columns}")
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    figure = Figure(figsize=(columns * tile_inches, rows * tile_inches * 1.1), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)  # Agg canvas: no display needed, no pyplot state shared between threads
    for number, tile in enumerate(tiles):
        axes = figure.add_subplot(rows, columns, number + 1)
        image, mask, box = _thumbnail(tile)
        axes.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        if mask is not None and mask.any() and not mask.all():
            axes.contour(mask.astype(float), levels=[0.5], colors=MASK_COLOUR, linewidths=1.0)
        if box is not None:
            top, left, bottom, right = box
            # Pixel (r, c) covers [c - 0.5, c + 0.5]: the exclusive bottom/right edge sits at index - 0.5.
            axes.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top,
                                     fill=False, edgecolor=BOX_COLOUR, linewidth=1.3))
        axes.set_title(_shorten(tile.title), fontsize=6.5)
        axes.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
