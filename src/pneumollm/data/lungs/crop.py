"""The crop step: bounding rectangle of the lung mask plus a margin, or the whole film on failure.

A segmenter that finds the lungs on a shrunk copy of the film (``lungs=threshold``) may also offer
``segment_working(image, image_id) -> WorkingMask | None``: the crop step then checks the mask and finds
its box at the working size, mapped exactly onto the film, and enlarges the mask only for ``CropResult``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumollm.data.lungs.base import LungSegmenter
from pneumollm.data.lungs.components import component_masks, label_components, nearest_indices, resize_mask

# Box convention everywhere in the suite: (top, left, bottom, right), bottom/right exclusive.
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CropResult:
    """What the crop step did to one film."""

    image: np.ndarray  # the cropped film (the whole film when not cropped)
    box: Box | None  # crop rectangle in the input film's pixels; None when the whole film is kept
    mask: np.ndarray | None  # the lung mask found (for QC sheets), if any
    status: str  # "cropped", "not_cropped" (lungs=none) or "fallback" (segmentation failed)
    reason: str = ""  # why the film fell back to the whole film


@dataclass(frozen=True)
class PlausibilityChecks:
    """Limits a lung mask must meet before the film is cropped to it (areas are fractions of the film).

    The defaults pass every ground-truth mask of ``openist-lungs`` (lungs fill 15-46% of those
    tightly framed films; the smaller lung is at least 70% of the larger one there).
    """

    min_area: float = 0.05  # both lungs together
    max_area: float = 0.75
    min_second_lung: float = 0.15  # smaller lung's area relative to the larger one
    max_column_overlap: float = 0.5  # shared columns of the two lungs, relative to the narrower lung
    max_border_sides: int = 1  # film sides the lungs' bounding box may touch


def mask_bounding_box(mask: np.ndarray) -> Box | None:
    """Bounding rectangle of the non-zero pixels of ``mask``, or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def expand_box(box: Box, margin: float, shape: tuple[int, int]) -> Box:
    """Grow ``box`` by ``margin`` (a fraction of its height/width) on each side, clipped to the film."""
    top, left, bottom, right = box
    dy = round((bottom - top) * margin)
    dx = round((right - left) * margin)
    height, width = shape
    return max(0, top - dy), max(0, left - dx), min(height, bottom + dy), min(width, right + dx)


def lung_box(mask: np.ndarray) -> Box | None:
    """Bounding rectangle of the two largest regions of ``mask`` (small stray blobs do not stretch it)."""
    regions = component_masks(mask, 2)
    if not regions:
        return None
    return mask_bounding_box(np.logical_or.reduce(regions))


def implausibility(mask: np.ndarray, checks: PlausibilityChecks | None = None) -> str:
    """Why ``mask`` cannot be a pair of lungs, or "" when it looks plausible.

    Only the two largest regions count (the ones :func:`lung_box` frames).
    """
    return _assess(mask, checks)[0]


@dataclass(frozen=True)
class WorkingMask:
    """A lung mask found at a segmenter's working size, standing for its nearest-neighbour enlargement to the
    film (:func:`~pneumollm.data.lungs.components.resize_mask`): film pixel (r, c) is lung when
    ``small[rows[r], cols[c]]`` is, with ``rows``/``cols`` from ``nearest_indices``."""

    small: np.ndarray  # boolean mask at the working size
    shape: tuple[int, int]  # the film's (height, width)

    def full(self) -> np.ndarray:
        """The mask at the film's size."""
        return resize_mask(self.small, self.shape)


def _assess(mask: np.ndarray, checks: PlausibilityChecks | None) -> tuple[str, Box | None]:
    """(:func:`implausibility`'s reason, :func:`lung_box`'s rectangle) from one labelling of ``mask``."""
    regions = component_masks(mask, 2)
    if not regions:
        return _judge([], None, 0.0, mask.shape, checks)
    lungs = np.logical_or.reduce(regions)
    sizes = [int(region.sum()) for region in regions]
    spans = [mask_bounding_box(region) for region in regions]
    return _judge(sizes, mask_bounding_box(lungs), lungs.mean(), mask.shape, checks, spans)


def _assess_working(working: WorkingMask, checks: PlausibilityChecks | None) -> tuple[str, Box | None]:
    """:func:`_assess` of the film-size mask, computed on the working-size one.

    When the film is at least as large as the working image along both axes, every working pixel becomes a
    block of film pixels, so the regions (8-connected) are the same and in the same order, each one's film
    area is the sum of its blocks' areas and its rectangle maps to the film through the blocks' edges: the
    result is exactly that of the film-size mask. A film smaller than the working size has its mask enlarged
    (shrunk, in fact) and assessed as is.
    """
    small = working.small.astype(bool)
    indices = [nearest_indices(size, film_size) for size, film_size in zip(small.shape, working.shape)]
    blocks = [np.bincount(index, minlength=size) for index, size in zip(indices, small.shape)]
    if any((counts == 0).any() for counts in blocks):
        return _assess(working.full(), checks)
    labels, _ = label_components(small)
    film_sizes = np.bincount(labels.ravel(), weights=np.outer(*blocks).ravel())[1:].round().astype(np.int64)
    order = np.argsort(film_sizes)[::-1][:2] + 1  # the labels component_masks would pick on the film-size mask
    if order.size == 0:
        return _judge([], None, 0.0, working.shape, checks)
    regions = [labels == label for label in order]
    sizes = [int(film_sizes[label - 1]) for label in order]
    area = sum(sizes) / (working.shape[0] * working.shape[1])
    box = _to_film(mask_bounding_box(np.logical_or.reduce(regions)), indices)
    spans = [_to_film(mask_bounding_box(region), indices) for region in regions]
    return _judge(sizes, box, area, working.shape, checks, spans)


def _to_film(box: Box | None, indices: list[np.ndarray]) -> Box | None:
    """A working-size rectangle mapped to the film: from the first film row/column drawn from its first
    row/column to the last one drawn from its last (``indices``: the working pixel of each film row and column)."""
    if box is None:
        return None
    rows, cols = indices
    top, left, bottom, right = box
    return (int(np.searchsorted(rows, top)), int(np.searchsorted(cols, left)),
            int(np.searchsorted(rows, bottom - 1, side="right")), int(np.searchsorted(cols, right - 1, side="right")))


def _judge(sizes: list[int], box: Box | None, area: float, shape: tuple[int, int],
           checks: PlausibilityChecks | None, spans: list[Box | None] | None = None) -> tuple[str, Box | None]:
    """The plausibility checks on the (at most two) largest regions: their film sizes, largest first, the
    rectangle of both, their share of the film, the film's shape and each region's rectangle."""
    checks = checks or PlausibilityChecks()
    if not sizes:
        return "empty lung mask", None
    if area < checks.min_area:
        return f"lung mask too small ({area:.1%} of the film)", box
    if area > checks.max_area:
        return f"lung mask too large ({area:.1%} of the film)", box
    if len(sizes) < 2:
        return "only one lung found", box
    first, second = sizes
    if second < checks.min_second_lung * first:
        return f"only one lung found (second region is {second / first:.0%} of the first)", box
    (_, left_a, _, right_a), (_, left_b, _, right_b) = spans  # type: ignore[misc]
    shared = max(0, min(right_a, right_b) - max(left_a, left_b))
    if shared > checks.max_column_overlap * min(right_a - left_a, right_b - left_b):
        return "the two largest regions are not side by side (one above the other)", box
    top, left, bottom, right = box  # type: ignore[misc]
    height, width = shape
    sides = [name for name, hit in
             (("top", top == 0), ("left", left == 0), ("bottom", bottom == height), ("right", right == width)) if hit]
    if len(sides) > checks.max_border_sides:
        return f"lung mask touches the film border ({', '.join(sides)})", box
    return "", box


def crop_to_lungs(
    image: np.ndarray,
    segmenter: LungSegmenter,
    image_id: str,
    margin: float = 0.05,
    checks: PlausibilityChecks | None = None,
) -> CropResult:
    """Crop ``image`` to its lungs' bounding rectangle grown by ``margin``; keep the whole film on failure.

    The rectangle frames the mask's two largest regions. A mask that fails the plausibility
    ``checks`` (empty, too small or large, one lung, lungs not side by side, touching the film border)
    keeps the whole film, with the reason in ``CropResult.reason``.
    """
    if margin < 0:
        raise ValueError(f"lungs.margin must be >= 0, got {margin}")
    if segmenter.name == "none":
        return CropResult(image=image, box=None, mask=None, status="not_cropped")
    segment_working = getattr(segmenter, "segment_working", None)
    found = segment_working(image, image_id) if segment_working is not None else segmenter(image, image_id)
    if found is None:
        reason = getattr(segmenter, "last_failure", "") or "no lung mask available"
        return CropResult(image=image, box=None, mask=None, status="fallback", reason=reason)
    if tuple(found.shape) != image.shape[:2]:
        raise ValueError(
            f"{image_id}: lungs={segmenter.name} returned a {tuple(found.shape)} mask for a {image.shape[:2]} film"
        )
    if isinstance(found, WorkingMask):
        reason, lungs = _assess_working(found, checks)
        mask = found.full()
    else:
        mask = found.astype(bool)
        reason, lungs = _assess(mask, checks)
    if reason:
        return CropResult(image=image, box=None, mask=mask, status="fallback", reason=reason)
    box = expand_box(lungs, margin, image.shape[:2])  # type: ignore[arg-type]
    top, left, bottom, right = box
    return CropResult(image=image[top:bottom, left:right], box=box, mask=mask, status="cropped")
