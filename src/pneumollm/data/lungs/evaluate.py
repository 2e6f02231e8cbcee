"""Measure a lung-segmentation option against ground-truth masks: lung Dice and bounding-rectangle IoU.

Pairs each film ``NAME.jpg`` (or .jpeg/.png/...) in a folder with its mask ``NAME@.png`` (``find_pairs``), runs
the segmenter and the crop step (without margin) on the 8-bit greyscale film, and writes ``per_film.csv``,
``summary.json`` and ``worst_films.png`` (a QC sheet of the lowest IoUs) into the output folder (``evaluate``).
A film whose crop falls back to the whole film scores the whole film's rectangle and counts as a failure.
The console script is ``pneumollm-eval-lungs`` (``pneumollm.cli.eval_lungs``).
"""

from __future__ import annotations

import csv
import heapq
import json
import platform
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pneumollm.data.lungs.base import LungSegmenter
from pneumollm.data.lungs.crop import Box, crop_to_lungs, expand_box, mask_bounding_box
from pneumollm.data.lungs.metrics import box_area, box_iou, dice
from pneumollm.data.lungs.qc import QCItem, write_qc_sheet
from pneumollm.utils.progress import progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SEGMENTERS = ("threshold", "unet")
MARGINS = (0.0, 0.025, 0.05, 0.075, 0.1)


@dataclass(frozen=True)
class FilmScore:
    """One film's result."""

    image: str
    dice: float
    box_iou: float
    status: str
    reason: str
    predicted_box: str
    true_box: str
    height: int
    width: int
    seconds: float


def find_pairs(images: Path, mask_suffix: str = "@.png") -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(film, mask) pairs in ``images`` and the films that have no mask, both sorted by name."""
    if not images.is_dir():
        raise FileNotFoundError(f"--images {images} is not a folder")
    pairs, unpaired = [], []
    for path in sorted(images.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.endswith(mask_suffix):
            continue
        mask = path.with_name(path.stem + mask_suffix)
        if mask.is_file():
            pairs.append((path, mask))
        else:
            unpaired.append(path)
    return pairs, unpaired


def read_grey(path: Path) -> np.ndarray:
    """An image file as an 8-bit greyscale array."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except OSError as err:
        raise ValueError(f"{path}: cannot be read as an image ({err})") from err


def make_segmenter(name: str, weights: str | None = None, device: str = "cpu") -> LungSegmenter:
    """The segmenter called ``name`` with its default settings (the U-Net needs ``weights``)."""
    if name == "threshold":
        from pneumollm.data.lungs.threshold import ThresholdSegmenter

        return ThresholdSegmenter()
    if name == "unet":
        from pneumollm.data.lungs.unet import UNetSegmenter

        return UNetSegmenter(weights, device=device)
    raise ValueError(f"unknown segmenter {name!r}; choose from {SEGMENTERS}")


def score_film(image_path: Path, mask_path: Path, segmenter: LungSegmenter) -> tuple[FilmScore, QCItem]:
    """Dice of the segmenter's mask and IoU of the crop rectangle (no margin) against the ground truth."""
    film = read_grey(image_path)
    truth = read_grey(mask_path) > 127
    if truth.shape != film.shape:
        raise ValueError(f"{mask_path}: mask is {truth.shape} but the film {image_path.name} is {film.shape}")
    start = time.perf_counter()
    crop = crop_to_lungs(film, segmenter, image_path.name, margin=0.0)
    seconds = time.perf_counter() - start
    height, width = film.shape
    predicted = crop.box if crop.box is not None else (0, 0, height, width)
    true_box = mask_bounding_box(truth)
    if true_box is None:
        raise ValueError(f"{mask_path}: the ground-truth mask is empty")
    score = FilmScore(
        image=image_path.name,
        dice=dice(crop.mask, truth) if crop.mask is not None else 0.0,
        box_iou=box_iou(predicted, true_box),
        status=crop.status,
        reason=crop.reason,
        predicted_box=" ".join(map(str, predicted)),
        true_box=" ".join(map(str, true_box)),
        height=height,
        width=width,
        seconds=seconds,
    )
    title = f"{image_path.name} | IoU {score.box_iou:.2f} | {crop.status}"
    return score, QCItem(image=film, mask=crop.mask, box=crop.box, title=title)


def _stats(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    return {"mean": round(float(array.mean()), 4), "median": round(float(np.median(array)), 4),
            "min": round(float(array.min()), 4), "max": round(float(array.max()), 4)}


def margin_effect(scores: Sequence[FilmScore], margins: Sequence[float] = MARGINS) -> dict[str, dict[str, float]]:
    """For each crop margin: mean IoU of the grown crop box with the true lung box, and the share of
    films whose crop holds (almost, >= 99%) all of the true lung box."""
    effect = {}
    for margin in margins:
        ious, covered = [], []
        for score in scores:
            truth = _box(score.true_box)
            crop = expand_box(_box(score.predicted_box), margin, (score.height, score.width))
            inside = (max(crop[0], truth[0]), max(crop[1], truth[1]), min(crop[2], truth[2]), min(crop[3], truth[3]))
            ious.append(box_iou(crop, truth))
            covered.append(box_area(inside) >= 0.99 * box_area(truth))
        effect[f"{margin:g}"] = {"box_iou_mean": round(float(np.mean(ious)), 4),
                                 "films_covering_true_box": round(float(np.mean(covered)), 4)}
    return effect


def _box(text: str) -> Box:
    top, left, bottom, right = (int(value) for value in text.split())
    return top, left, bottom, right


def summarise(scores: Sequence[FilmScore], segmenter: str, images: Path, unpaired: int) -> dict:
    """Summary figures of a run (mean/median/min of Dice and IoU, failures by reason)."""
    ious = [s.box_iou for s in scores]
    return {
        "segmenter": segmenter,
        "images": str(images),
        "films": len(scores),
        "films_without_mask": unpaired,
        "dice": _stats([s.dice for s in scores]),
        "box_iou": _stats(ious),
        "box_iou_below_0.7": int(sum(iou < 0.7 for iou in ious)),
        "failures": int(sum(s.status != "cropped" for s in scores)),
        "failure_reasons": dict(Counter(s.reason for s in scores if s.status != "cropped")),
        "margin_effect": margin_effect(scores),
        "seconds_per_film": round(float(np.mean([s.seconds for s in scores])), 4),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }


def evaluate(pairs: Sequence[tuple[Path, Path]], segmenter: LungSegmenter, out: Path, *, name: str, images: Path,
             unpaired: int, worst: int = 12, progress: bool = True) -> dict:
    """Score every (film, mask) pair with ``segmenter`` (called ``name``) and write ``per_film.csv``,
    ``summary.json`` and, with ``worst`` > 0, ``worst_films.png`` into ``out``; returns the summary."""
    scores: list[FilmScore] = []
    lowest: list[tuple[float, int, QCItem]] = []  # heap of the lowest IoUs (negated: the best on top)
    for image_path, mask_path in progress_bar(pairs, f"lungs={name}", enabled=progress):
        score, tile = score_film(image_path, mask_path, segmenter)
        scores.append(score)
        if worst > 0:
            heapq.heappush(lowest, (-score.box_iou, len(scores), tile))
            if len(lowest) > worst:
                heapq.heappop(lowest)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "per_film.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(scores[0])))
        writer.writeheader()
        for score in scores:
            row = asdict(score)
            row.update(dice=f"{score.dice:.4f}", box_iou=f"{score.box_iou:.4f}", seconds=f"{score.seconds:.3f}")
            writer.writerow(row)
    summary = summarise(scores, name, images, unpaired)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if lowest:
        write_qc_sheet([tile for _, _, tile in sorted(lowest, reverse=True)], out / "worst_films.png", columns=4)
    return summary
