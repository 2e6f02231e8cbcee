"""The crop step: bounding rectangle of the lung mask plus a margin, or the whole film on failure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumollm.data.lungs.base import LungSegmenter
from pneumollm.data.lungs.components import component_masks

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


def _assess(mask: np.ndarray, checks: PlausibilityChecks | None) -> tuple[str, Box | None]:
    """(:func:`implausibility`'s reason, :func:`lung_box`'s rectangle) from one labelling of ``mask``."""
    checks = checks or PlausibilityChecks()
    regions = component_masks(mask, 2)
    if not regions:
        return "empty lung mask", None
    lungs = np.logical_or.reduce(regions)
    box = mask_bounding_box(lungs)
    area = lungs.mean()
    if area < checks.min_area:
        return f"lung mask too small ({area:.1%} of the film)", box
    if area > checks.max_area:
        return f"lung mask too large ({area:.1%} of the film)", box
    if len(regions) < 2:
        return "only one lung found", box
    first, second = (int(region.sum()) for region in regions)
    if second < checks.min_second_lung * first:
        return f"only one lung found (second region is {second / first:.0%} of the first)", box
    spans = [mask_bounding_box(region) for region in regions]
    (_, left_a, _, right_a), (_, left_b, _, right_b) = spans  # type: ignore[misc]
    shared = max(0, min(right_a, right_b) - max(left_a, left_b))
    if shared > checks.max_column_overlap * min(right_a - left_a, right_b - left_b):
        return "the two largest regions are not side by side (one above the other)", box
    top, left, bottom, right = box  # type: ignore[misc]
    height, width = mask.shape
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
    mask = segmenter(image, image_id)
    if mask is None:
        reason = getattr(segmenter, "last_failure", "") or "no lung mask available"
        return CropResult(image=image, box=None, mask=None, status="fallback", reason=reason)
    if mask.shape != image.shape[:2]:
        raise ValueError(
            f"{image_id}: lungs={segmenter.name} returned a {mask.shape} mask for a {image.shape[:2]} film"
        )
    mask = mask.astype(bool)
    reason, lungs = _assess(mask, checks)
    if reason:
        return CropResult(image=image, box=None, mask=mask, status="fallback", reason=reason)
    box = expand_box(lungs, margin, image.shape[:2])  # type: ignore[arg-type]
    top, left, bottom, right = box
    return CropResult(image=image[top:bottom, left:right], box=box, mask=mask, status="cropped")
