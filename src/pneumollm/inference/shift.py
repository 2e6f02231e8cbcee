"""Whether a film to predict looks like the model's training films: the reasons in the ``shift`` column.

A film is compared to the training-film profile of the model (``data.film_profile``) with simple rules, each
giving one reason (docs/prediction.md, "The shift column"):

- native size: either side outside [0.5x, 2x] of the training films' range of that side;
- file kind: a DICOM film where the training films were PNG/JPEG/TIFF/BMP images, or the reverse;
- modality, photometric interpretation: a DICOM film's value that no training film had;
- bits: outside the training films' range (compared when the file kind matches);
- lung crop: this film's crop fell back to the whole film while fewer than half of the training films' did;
- layout: the model input's 8 x 8 layout correlates negatively with the training films' mean layout (bright
  where they are dark: an inverted film), checked where the training films share a layout (99 % of them
  correlate positively with their mean);
- intensity: the Wasserstein distance of the model input's grey-level histogram to the training films' exceeds
  ``max(10, 1.5 x`` the training films' own 99th percentile``)`` grey levels.

The prediction itself is never changed: the column only warns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pneumollm.data.film_profile import intensity_distance, intensity_histograms, layout_correlation, layouts
from pneumollm.data.film_source import DICOM, FilmSource
from pneumollm.inference.inputs import InputFilm

SIZE_FACTOR = 2.0  # a native side may be half the training films' smallest or twice their largest
FALLBACK_RATE = 0.5  # a crop fallback is unusual when training films fell back less often than this
INTENSITY_FACTOR = 1.5  # the intensity threshold: this times the training films' 99th-percentile distance ...
INTENSITY_FLOOR = 10.0  # ... and at least this many grey levels
INVERTED_CORRELATION = 0.0  # a layout correlation below this: the film looks inverted, where the training films'
# own 1st percentile is above it (a cohort of films that share no layout, like noise, never calls one inverted)
SEPARATOR = "; "
NO_PROFILE = ("the model has no training-film profile (trained before profiles were recorded): the shift column "
              "stays empty. Run its training again (finished folds are skipped and get their profile), then "
              "re-export it if you use an export")


def intensity_threshold(profile: dict[str, Any]) -> float:
    """The distance (grey levels) above which a film's intensities are far from the training films'."""
    return max(INTENSITY_FLOOR, INTENSITY_FACTOR * float(profile["intensity"]["distance"]["q99"]))


def _span(values: Sequence[int]) -> str:
    return f"{values[0]}" if values[0] == values[1] else f"{values[0]}-{values[1]}"


def _size_reason(profile: dict[str, Any], source: FilmSource) -> str | None:
    native = profile.get("native", {})
    width, height = native.get("width"), native.get("height")
    if not (source.width and source.height and width and height):
        return None
    outside = any(not (lo / SIZE_FACTOR <= value <= hi * SIZE_FACTOR)
                  for value, (lo, hi) in ((source.width, width), (source.height, height)))
    if not outside:
        return None
    return f"native size {source.width}x{source.height} px, training films {_span(width)}x{_span(height)} px"


def _names(counts: dict[str, int]) -> str:
    return "/".join(counts)


def _header_reasons(profile: dict[str, Any], source: FilmSource) -> list[str]:
    """File kind, modality, photometric interpretation and bits against the training films'."""
    reasons = []
    formats = profile.get("formats", {})
    rasters = {k: n for k, n in formats.items() if k != DICOM}
    kind_differs = bool(source.format and formats) and (
        (source.format == DICOM and DICOM not in formats) or (source.format != DICOM and not rasters))
    if kind_differs:
        what = "DICOM file" if source.format == DICOM else f"{source.format} image"
        reasons.append(f"{what}, training films {_names(rasters) + ' images' if rasters else DICOM}")
    modalities, photometric = profile.get("modalities", {}), profile.get("photometric", {})
    if source.modality and modalities and source.modality not in modalities:
        reasons.append(f"modality {source.modality}, training films {_names(modalities)}")
    if source.photometric and photometric and source.photometric not in photometric:
        note = " (inverted when decoded)" if source.photometric == "MONOCHROME1" else ""
        reasons.append(f"{source.photometric}{note}, training films {_names(photometric)}")
    bits = sorted(int(b) for b in profile.get("bits", {}))
    if source.bits and bits and not kind_differs and not bits[0] <= source.bits <= bits[-1]:
        reasons.append(f"{source.bits} bits, training films {_span([bits[0], bits[-1]])} bits")
    return reasons


def _crop_reason(profile: dict[str, Any], crop_status: str) -> str | None:
    crops = profile.get("crop", {})
    if crop_status != "fallback" or not crops:
        return None
    rate = crops.get("fallback", 0) / max(1, sum(crops.values()))
    return f"lung crop fell back to the whole film (training films: {100 * rate:.0f} %)" if rate < FALLBACK_RATE \
        else None


def _input_reasons(profile: dict[str, Any], image: np.ndarray) -> list[str]:
    """Layout (inverted) and intensity of the model input against the training films'."""
    reasons = []
    layout = profile["layout"]
    shared = float(layout["correlation"]["q1"]) > INVERTED_CORRELATION
    if shared and layout_correlation(layouts(image[None]), layout["mean"])[0] < INVERTED_CORRELATION:
        reasons.append("input looks inverted (bright where the training films are dark)")
    histogram = intensity_histograms(image[None])[0]
    distance, threshold = float(intensity_distance(histogram, profile["intensity"]["histogram"])), \
        intensity_threshold(profile)
    if distance > threshold:
        mean, trained = float((histogram * np.arange(len(histogram))).sum()), float(profile["intensity"]["mean"])
        how = ("darker" if mean < trained else "brighter") if abs(mean - trained) >= distance / 2 else "other contrast"
        reasons.append(f"input intensity far from training films ({how}: mean {mean:.0f} vs {trained:.0f} grey "
                       f"levels, distance {distance:.0f} > {threshold:.0f})")
    return reasons


def shift_reasons(profile: dict[str, Any], source: FilmSource, crop_status: str, image: np.ndarray) -> list[str]:
    """Why a film looks unlike the training films of ``profile`` (empty when it looks like them): ``source`` from
    its header, ``crop_status`` of its lung crop, ``image`` the model's uint8 input."""
    reasons = [r for r in (_size_reason(profile, source),) if r]
    reasons += _header_reasons(profile, source)
    reasons += [r for r in (_crop_reason(profile, crop_status),) if r]
    return reasons + _input_reasons(profile, np.asarray(image, dtype=np.uint8))


def mark_shift(films: Sequence[InputFilm], profile: dict[str, Any] | None) -> int:
    """Fill the ``shift`` of every prepared film from ``profile`` (left empty without one); returns how many
    films look unlike the training films."""
    if profile is None:
        return 0
    flagged = 0
    for film in films:
        if film.status == "ok" and film.image is not None:
            film.shift = join_reasons(shift_reasons(profile, film.source, film.crop_status, film.image))
            flagged += bool(film.shift)
    return flagged


def join_reasons(reasons: Sequence[str]) -> str:
    """The ``shift`` cell: the distinct reasons in order, separated by ``; ``."""
    return SEPARATOR.join(dict.fromkeys(reasons))


def shift_summary(flagged: int, total: int) -> str:
    """The one console line after a prediction."""
    return f"{flagged} of {total} films look unlike the training films (see the shift column)"
