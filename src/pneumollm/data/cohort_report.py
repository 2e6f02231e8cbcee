"""What the console says about a prepared cohort: its counts, why films were skipped (counted by kind), and the
one error for a cohort none of whose films can be used, naming the setting or fix that would admit them.

Kept apart from ``preprocess.py``, whose source is part of the preprocessing cache key: rewording a message
must not invalidate every prepared film and run.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pneumollm.data.cohort import Skipped
from pneumollm.data.preprocess import PreparedCohort
from pneumollm.data.targets import CohortError

# The reason ``preprocess.process_film`` skips a film too small to use with.
_SMALL = re.compile(r"film is (\d+)x(\d+) pixels, smaller than the (\d+)-pixel minimum")
_LABELS_ROW = re.compile(r"^labels row \d+: ")


class NoUsableFilmsError(CohortError):
    """Every film of the cohort was skipped: nothing to train or test on."""


def reason_kind(reason: str) -> str:
    """A skip reason without the details that differ film by film (sizes, rows, exception text), for counting."""
    small = _SMALL.fullmatch(reason)
    if small:
        return f"smaller than the {small.group(3)}-pixel minimum (data.min_film_size)"
    return _LABELS_ROW.sub("", reason).split(" (")[0]


def count_reasons(skipped: Sequence[Skipped]) -> str:
    """``"38x smaller than the 64-pixel minimum (data.min_film_size); 2x file not found"``, commonest first."""
    counts = Counter(reason_kind(s.reason) for s in skipped)
    return "; ".join(f"{n}x {kind}" for kind, n in counts.most_common())


def report_counts(report_csv: Path) -> dict[str, object] | None:
    """What a prepared cohort's ``preprocess_report.csv`` says: films listed, used and skipped, the skipped ones
    counted by reason kind (``reason_kind``, commonest first) and the used ones by lung-crop outcome; None when the
    report cannot be read (a moved or deleted cohort folder)."""
    try:
        with Path(report_csv).open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return None
    used = [r for r in rows if r.get("status") == "ok"]
    skipped = Counter(reason_kind(r.get("reason") or "") for r in rows if r.get("status") == "skipped")
    return {"films_listed": len(rows), "films_used": len(used), "films_skipped": sum(skipped.values()),
            "skipped_reasons": dict(skipped.most_common()),
            "crop": dict(sorted(Counter(r.get("crop_status") or "?" for r in used).items()))}


def smallest_film(skipped: Sequence[Skipped]) -> tuple[int, int] | None:
    """(width, height) of the film with the shortest side among those skipped as too small."""
    sizes = [(int(m.group(1)), int(m.group(2))) for s in skipped if (m := _SMALL.fullmatch(s.reason))]
    return min(sizes, key=min) if sizes else None


def summary_lines(cohort: PreparedCohort, class_names: Sequence[str] = ("normal", "pneumoconiosis")) -> list[str]:
    """The prepared cohort's counts for the console: films and patients per class (in the cohort's class words),
    crops, skipped films by reason, and where the report is."""
    films = cohort.films
    negative, positive = class_names
    patients: dict[str, int] = {}
    for film in films:
        patients[film.patient_id] = max(film.label, patients.get(film.patient_id, 0))
    positive_films, positive_patients = sum(f.label for f in films), sum(patients.values())
    lines = [f"{len(films)} films ready ({cohort.decoded} decoded now, {len(films) - cohort.decoded} from cache): "
             f"{positive_films} {positive} / {len(films) - positive_films} {negative} films of {len(patients)} "
             f"patients ({positive_patients} {positive} / {len(patients) - positive_patients} {negative})"]
    if films:
        crops = Counter(f.crop_status for f in films)
        lines.append("crop: " + ", ".join(f"{n} {status}" for status, n in sorted(crops.items())) + " films")
    window_fallbacks = sum("min/max" in f.notes for f in films)
    if window_fallbacks:
        lines.append(f"{window_fallbacks} films had no VOI window and were scaled from their min/max range")
    if cohort.skipped:
        lines.append(f"{len(cohort.skipped)} skipped: {count_reasons(cohort.skipped)}")
    lines.append(f"report: {cohort.report_csv}")
    return lines


def _hints(skipped: Sequence[Skipped], source_file: Path | None) -> list[str]:
    hints = []
    smallest = smallest_film(skipped)
    if smallest is not None:
        hints.append(f"data.min_film_size={min(smallest)} admits the small films (the smallest is "
                     f"{smallest[0]}x{smallest[1]} pixels)")
    missing = [s for s in skipped if reason_kind(s.reason) == "file not found"]
    if missing:
        where = f"the folder of {source_file.name} ({source_file.parent})" if source_file else "the CSV's folder"
        hints.append(f"paths are read relative to {where}: {missing[0].path} does not exist")
    if any(reason_kind(s.reason).startswith("modality ") for s in skipped):
        hints.append("data.allowed_modalities=[...] admits other DICOM modalities")
    if any(s.reason == "no label row for this file" for s in skipped):
        hints.append("the labels CSV names none of these files (check its file or sop_instance_uid column)")
    return hints


def no_usable_films(skipped: Sequence[Skipped], source: str, report: Path | None = None,
                    source_file: Path | None = None) -> NoUsableFilmsError:
    """The error for a cohort whose every film was skipped: counts per reason, the fix for each where there is
    one, and the report listing every film. ``source``: the cohort as the user gave it (a manifest, a folder);
    ``source_file``: the CSV whose paths were read, if any."""
    if not skipped:
        return NoUsableFilmsError(f"{source}: lists no films")
    parts = [f"{source}: no usable film, all {len(skipped)} skipped ({count_reasons(skipped)})",
             *_hints(skipped, source_file)]
    if report is not None:
        parts.append(f"every film's reason: {report}")
    return NoUsableFilmsError("; ".join(parts))
