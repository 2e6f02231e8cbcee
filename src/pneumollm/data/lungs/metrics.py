"""Agreement measures between a predicted lung mask/box and the ground truth."""

from __future__ import annotations

import numpy as np

from pneumollm.data.lungs.crop import Box


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    total = int(predicted.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(predicted, truth).sum()) / total


def box_area(box: Box) -> int:
    """Pixel count of a (top, left, bottom, right) box, bottom/right exclusive."""
    top, left, bottom, right = box
    return max(0, bottom - top) * max(0, right - left)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (top, left, bottom, right) boxes."""
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union else 0.0
