"""Connected-component helpers shared by the lung segmenters and the crop step's checks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label the 8-connected components of ``mask``; returns (labels, sizes) with ``sizes[i]`` for label i+1."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return labels, sizes


def keep_largest_components(mask: np.ndarray, count: int = 2) -> np.ndarray:
    """The ``count`` largest 8-connected components of ``mask`` (all of them when there are fewer)."""
    labels, sizes = label_components(mask)
    if sizes.size <= count:
        return mask.astype(bool)
    keep = np.argsort(sizes)[::-1][:count] + 1
    return np.isin(labels, keep)


def component_masks(mask: np.ndarray, count: int | None = None) -> list[np.ndarray]:
    """The components of ``mask`` as separate boolean masks, largest first (at most ``count``)."""
    labels, sizes = label_components(mask)
    order = np.argsort(sizes)[::-1][:count] + 1
    return [labels == label for label in order]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its enclosed holes filled."""
    return ndimage.binary_fill_holes(mask)


def nearest_indices(size: int, new_size: int) -> np.ndarray:
    """For each of ``new_size`` pixels along an axis, the pixel of the ``size``-pixel axis it takes its value from
    in a nearest-neighbour resize (pixel centres aligned, as skimage's ``resize(order=0)``); non-decreasing."""
    coords = (np.arange(new_size) + 0.5) * (size / new_size) - 0.5
    return np.clip(np.floor(coords + 0.5), 0, size - 1).astype(np.intp)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to ``shape`` (height, width).

    Pixel for pixel what ``skimage.transform.resize(mask, shape, order=0)`` gives, built by repeating rows
    and columns (the source indices never decrease), which is many times faster on a full-size film.
    """
    mask = mask.astype(bool)
    if mask.shape == tuple(shape):
        return mask
    repeats = [np.bincount(nearest_indices(size, new_size), minlength=size)
               for size, new_size in zip(mask.shape, shape)]
    return mask.repeat(repeats[0], axis=0).repeat(repeats[1], axis=1)


# Disk morphology through the Euclidean distance transform: exact for a disk of radius r and, unlike
# scipy's binary_erosion/dilation with a large footprint, its cost does not grow with the radius.
def dilate_disk(mask: np.ndarray, radius: float) -> np.ndarray:
    """``mask`` dilated by a disk of ``radius`` pixels."""
    if not mask.any():
        return mask.astype(bool)
    return ndimage.distance_transform_edt(~mask.astype(bool)) <= radius


def erode_disk(mask: np.ndarray, radius: float, outside_is_mask: bool = False) -> np.ndarray:
    """``mask`` eroded by a disk of ``radius`` pixels; ``outside_is_mask`` treats the film border as mask."""
    mask = mask.astype(bool)
    if outside_is_mask:
        if mask.all():
            return mask
        return ndimage.distance_transform_edt(mask) > radius
    padded = np.pad(mask, 1, constant_values=False)
    return (ndimage.distance_transform_edt(padded) > radius)[1:-1, 1:-1]


def open_disk(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological opening of ``mask`` with a disk of ``radius`` pixels (removes thin bridges and specks)."""
    return dilate_disk(erode_disk(mask, radius), radius)


def lung_pair(mask: np.ndarray, side_margin: float = 0.1) -> np.ndarray:
    """The largest component on each side of the film's midline, ignoring those centred in the outer bands.

    Lungs sit left and right of the midline; components centred within ``side_margin`` (a fraction of
    the width) of the film's left or right edge are noise outside the body, and smaller components
    on the same side as a lung are false blobs (gas below the diaphragm, for instance).
    """
    labels, sizes = label_components(mask)
    if sizes.size == 0:
        return np.zeros(mask.shape, dtype=bool)
    width = mask.shape[1]
    index = np.arange(1, sizes.size + 1)
    cols = np.asarray(ndimage.center_of_mass(mask, labels, index)).reshape(-1, 2)[:, 1]
    inner = (cols >= side_margin * width) & (cols <= (1 - side_margin) * width)
    keep = []
    for side in (cols < width / 2, cols >= width / 2):
        candidates = np.flatnonzero(inner & side)
        if candidates.size:
            keep.append(index[candidates[np.argmax(sizes[candidates])]])
    return np.isin(labels, keep)
