"""What a set of films looked like before and after preprocessing: the profile prediction compares new films to.

A profile (``training_films.json`` in each run folder, written by the fold runner from the fold's training films,
and ``training_films`` in an export) records the films' file formats, native sizes, bits, modalities and
photometric interpretations (from their headers, ``film_source``), their lung-crop outcomes, and the intensity
histogram of the model's input (the preprocessed uint8 image) with the distribution of each training film's own
distance to it. The distance is the 1-D Wasserstein (earth mover's) distance between two grey-level
histograms, in grey levels: how far, on average, the intensities must move to turn one into the other.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumollm.data.film_source import FilmSource, cached_sources
from pneumollm.data.preprocess import PreparedFilm

PROFILE_FILE = "training_films.json"
PROFILE_FORMAT = 1
LEVELS = 256  # uint8 grey levels: one histogram bin each
LAYOUT_SIZE = 8  # the layout: each model input shrunk to 8 x 8 mean grey levels
DISTANCE_QUANTILES = (0.5, 0.9, 0.95, 0.99, 1.0)  # of the training films' own intensity distances (large = far)
CORRELATION_QUANTILES = (0.0, 0.01, 0.05, 0.5)  # of their own layout correlations (small = unlike the others)
_CHUNK = 256  # films per bincount: bounds the index array's memory for large cohorts


def intensity_histograms(images: np.ndarray) -> np.ndarray:
    """Each uint8 image's grey-level histogram as fractions: [N, 256] from [N, ...]."""
    images = np.asarray(images)
    flat = images.reshape(len(images), -1)
    out = np.zeros((len(images), LEVELS), dtype=np.float64)
    for start in range(0, len(flat), _CHUNK):
        chunk = flat[start:start + _CHUNK].astype(np.int64)
        offsets = np.arange(len(chunk), dtype=np.int64)[:, None] * LEVELS
        counts = np.bincount((chunk + offsets).ravel(), minlength=len(chunk) * LEVELS).reshape(len(chunk), LEVELS)
        out[start:start + len(chunk)] = counts / max(1, flat.shape[1])
    return out


def intensity_distance(histograms: np.ndarray, reference: Sequence[float] | np.ndarray) -> np.ndarray:
    """Wasserstein-1 distance in grey levels of each histogram [N, 256] (or one [256]) to ``reference``: the
    area between the two cumulative distributions."""
    ref = np.cumsum(np.asarray(reference, dtype=np.float64))
    return np.abs(np.cumsum(np.asarray(histograms, dtype=np.float64), axis=-1) - ref).sum(axis=-1)


def layouts(images: np.ndarray) -> np.ndarray:
    """Each uint8 image shrunk to ``LAYOUT_SIZE`` x ``LAYOUT_SIZE`` mean grey levels, flattened: [N, 64]."""
    from PIL import Image

    size = (LAYOUT_SIZE, LAYOUT_SIZE)
    return np.array([np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).resize(size, Image.Resampling.BOX),
                                dtype=np.float64).ravel() for image in images]).reshape(len(images), -1)


def layout_correlation(films: np.ndarray, reference: Sequence[float] | np.ndarray) -> np.ndarray:
    """Pearson correlation of each layout [N, 64] (or one [64]) with ``reference``: near 1 for a film laid out
    like the reference, negative for its negative. 0 for a uniform layout."""
    films = np.atleast_2d(np.asarray(films, dtype=np.float64))
    a = films - films.mean(axis=1, keepdims=True)
    b = np.asarray(reference, dtype=np.float64) - np.mean(reference)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b)
    return np.divide(a @ b, norms, out=np.zeros(len(a)), where=norms > 0)


def _quantiles(values: np.ndarray, quantiles: Sequence[float]) -> dict[str, float]:
    return {f"q{round(q * 100)}": round(float(np.quantile(values, q)), 4) for q in quantiles}


def _counts(values: Sequence[object]) -> dict[str, int]:
    return {str(k): n for k, n in sorted(Counter(v for v in values if v not in (None, "")).items(),
                                         key=lambda kv: str(kv[0]))}


def _range(values: Sequence[int | None]) -> list[int] | None:
    known = [int(v) for v in values if v]
    return [min(known), max(known)] if known else None


def build_profile(sources: Sequence[FilmSource], crop_statuses: Sequence[str], images: np.ndarray) -> dict[str, Any]:
    """The profile of films given their header facts, lung-crop statuses and model inputs (uint8 [N, H, W])."""
    images = np.asarray(images)
    histograms = intensity_histograms(images)
    pooled = histograms.mean(axis=0) if len(histograms) else np.full(LEVELS, 1.0 / LEVELS)
    distances = intensity_distance(histograms, pooled) if len(histograms) else np.zeros(1)
    levels = np.arange(LEVELS)
    shapes = layouts(images) if len(images) else np.zeros((0, LAYOUT_SIZE * LAYOUT_SIZE))
    layout = shapes.mean(axis=0) if len(shapes) else np.zeros(LAYOUT_SIZE * LAYOUT_SIZE)
    return {
        "format": PROFILE_FORMAT, "films": len(images), "image_size": int(images.shape[-1]) if images.ndim > 1 else 0,
        "native": {"width": _range([s.width for s in sources]), "height": _range([s.height for s in sources])},
        "formats": _counts([s.format for s in sources]),
        "modalities": _counts([s.modality for s in sources]),
        "photometric": _counts([s.photometric for s in sources]),
        "bits": _counts([s.bits for s in sources]),
        "crop": _counts(list(crop_statuses)),
        "intensity": {
            "histogram": [round(float(v), 8) for v in pooled],
            "mean": round(float((pooled * levels).sum()), 3),
            "distance": _quantiles(distances, DISTANCE_QUANTILES),
        },
        "layout": {"mean": [round(float(v), 3) for v in layout],
                   "correlation": _quantiles(layout_correlation(shapes, layout) if len(shapes) else np.zeros(1),
                                             CORRELATION_QUANTILES)},
    }


def profile_prepared(films: Sequence[PreparedFilm], images: np.ndarray, prepared_dir: Path) -> dict[str, Any]:
    """The profile of prepared films (a fold's training films) and their model inputs (uint8 [N, H, W]): headers
    from the source files once per cohort (``cached_sources``), crop statuses from the cohort index."""
    sources = cached_sources([(f.content_hash, f.source_path) for f in films], prepared_dir)
    return build_profile(sources, [f.crop_status for f in films], images)


def _extreme(quantiles: Sequence[dict[str, float]], pick: Any) -> dict[str, float]:
    """Quantile by quantile (in the first's order), the ``pick`` (max or min) of several folds' values."""
    return {q: pick(d[q] for d in quantiles if q in d) for q in quantiles[0]}


def merge_profiles(profiles: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One profile for an ensemble's folds (which share a cohort): counts summed, size ranges spanned, histograms
    and layouts averaged by film count, each distance quantile the largest of the folds' and each layout
    correlation quantile the smallest (the widest spread). None when there is none."""
    present = [p for p in profiles if p]
    if len(present) <= 1:
        return present[0] if present else None
    weights = [max(1, int(p.get("films", 0))) for p in present]
    histogram = np.average([p["intensity"]["histogram"] for p in present], axis=0, weights=weights)
    native = {}
    for side in ("width", "height"):
        spans = [p["native"][side] for p in present if p["native"].get(side)]
        native[side] = [min(s[0] for s in spans), max(s[1] for s in spans)] if spans else None
    counts = {key: dict(sorted(sum((Counter(p.get(key, {})) for p in present), Counter()).items()))
              for key in ("formats", "modalities", "photometric", "bits", "crop")}
    return {
        "format": PROFILE_FORMAT, "films": int(sum(weights)), "folds": len(present),
        "image_size": present[0].get("image_size", 0), "native": native, **counts,
        "intensity": {"histogram": [round(float(v), 8) for v in histogram],
                      "mean": round(float((histogram * np.arange(LEVELS)).sum()), 3),
                      "distance": _extreme([p["intensity"]["distance"] for p in present], max)},
        "layout": {"mean": [round(float(v), 3) for v in np.average([p["layout"]["mean"] for p in present], axis=0,
                                                                    weights=weights)],
                   "correlation": _extreme([p["layout"]["correlation"] for p in present], min)},
    }


def read_profile(path: str | Path) -> dict[str, Any] | None:
    """The profile in ``path`` (a ``training_films.json``), or None when there is none or it is of another format."""
    try:
        profile = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return profile if isinstance(profile, dict) and profile.get("format") == PROFILE_FORMAT else None
