"""The preprocessing stage: decode each film, crop it to the lungs, resize, and cache the result on disk.

The cache is keyed by the source file's content hash and by a fingerprint of the preprocessing settings,
so a second run (or a second epoch, fold or arm) never decodes a DICOM again. Films that cannot be used
are skipped and listed with the reason in ``preprocess_report.csv``; one bad file never stops the run.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pneumollm.data.cohort import CohortListing, FilmRecord, Skipped
from pneumollm.data.dicom import RADIOGRAPH_MODALITIES, UnreadableImageError
from pneumollm.data.films import decode_film
from pneumollm.data.lungs.base import LungSegmenter
from pneumollm.data.lungs.crop import crop_to_lungs
from pneumollm.utils.io import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    png_bytes,
    sha256_file,
    sha256_json,
)
from pneumollm.utils.progress import progress_bar

# Bump when the stage's output format changes; code changes are caught by ``code_fingerprint``.
PIPELINE_VERSION = 1
# The modules whose code decides a preprocessed film: a change to any of them starts a fresh cache.
_STAGE_MODULES = ("dicom.py", "films.py", "preprocess.py", "lungs")
THUMBNAIL_SIZE = 256
COHORT_FILE = "cohort.csv"
REPORT_FILE = "preprocess_report.csv"


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the source of the decoding, crop and resize code, so a code change never reuses stale films."""
    here = Path(__file__).parent
    files = sorted(f for name in _STAGE_MODULES for f in ([here / name] if name.endswith(".py")
                                                           else (here / name).glob("*.py")))
    return sha256_json({f.relative_to(here).as_posix(): sha256_file(f) for f in files})[:16]


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that determines a preprocessed film, apart from the source file's bytes."""

    image_size: int = 224
    lungs: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    margin: float = 0.05
    allowed_modalities: tuple[str, ...] = RADIOGRAPH_MODALITIES
    min_size: int = 64  # films with a shorter side (in pixels, as decoded) are skipped

    @property
    def lungs_name(self) -> str:
        return str(self.lungs.get("name") or self.lungs.get("_target_", "custom").rsplit(".", 1)[-1]).lower()

    def fingerprint(self) -> str:
        return sha256_json({"version": PIPELINE_VERSION, "code": code_fingerprint(), **asdict(self)})

    def tag(self) -> str:
        """Folder name of this setting's cache and cohort index, readable and unique."""
        return f"{self.lungs_name}-{self.image_size}px-{self.fingerprint()[:10]}"


@dataclass(frozen=True)
class PreparedFilm:
    """One preprocessed film as indexed in ``cohort.csv``."""

    image_id: str
    patient_id: str
    label: int
    source_path: str
    content_hash: str
    file: str  # cached image, relative to the cohort folder
    crop_status: str
    crop_reason: str
    notes: str
    extra: dict[str, str] = field(default_factory=dict, hash=False, compare=False)  # the cohort's own columns
    target: int | None = None  # what the task trains on (``targets.LabelTask``); None: the label (binary)

    def __post_init__(self) -> None:
        if self.target is None:
            object.__setattr__(self, "target", self.label)


BASE_COLUMNS = tuple(name for name in PreparedFilm.__dataclass_fields__ if name != "extra")


def extra_column(name: str) -> str:
    """The name a cohort's own column gets in cohort.csv and predictions.csv (``extra_<name>`` on a clash)."""
    return f"extra_{name}" if name in (*BASE_COLUMNS, "fold", "prob") else name


@dataclass
class PreparedCohort:
    """The preprocessed cohort: usable films, skipped inputs, and where they are written."""

    folder: Path
    films: list[PreparedFilm]
    skipped: list[Skipped]
    decoded: int = 0  # films decoded in this run (cache misses)

    @property
    def cohort_csv(self) -> Path:
        return self.folder / COHORT_FILE

    @property
    def report_csv(self) -> Path:
        return self.folder / REPORT_FILE

    def summary_lines(self) -> list[str]:
        """Human-readable counts for the console."""
        crops = Counter(f.crop_status for f in self.films)
        labels: dict[str, int] = {}
        for film in self.films:
            labels[film.patient_id] = max(film.label, labels.get(film.patient_id, 0))
        positive_films, positive_patients = sum(f.label for f in self.films), sum(labels.values())
        lines = [
            f"{len(self.films)} films ready ({self.decoded} decoded now, {len(self.films) - self.decoded} from cache): "
            f"{positive_films} pneumoconiosis / {len(self.films) - positive_films} normal films of {len(labels)} "
            f"patients ({positive_patients} with pneumoconiosis / {len(labels) - positive_patients} normal)",
            "crop: " + ", ".join(f"{n} {status}" for status, n in sorted(crops.items())) + " films",
        ]
        window_fallbacks = sum("min/max" in f.notes for f in self.films)
        if window_fallbacks:
            lines.append(f"{window_fallbacks} films had no VOI window and were scaled from their min/max range")
        if self.skipped:
            reasons = Counter(s.reason.split(" (")[0] for s in self.skipped)
            lines.append(f"{len(self.skipped)} skipped: " + "; ".join(f"{n}x {r}" for r, n in reasons.most_common()))
        lines.append(f"report: {self.report_csv}")
        return lines


class HashIndex:
    """Memo of file content hashes keyed by (path, size, mtime), so unchanged files are not re-read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        if path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError):
                self.entries = {}
        self.dirty = False

    def content_hash(self, file: Path) -> str:
        stat = file.stat()
        key = str(file)
        cached = self.entries.get(key)
        if cached and cached[0] == stat.st_size and cached[1] == stat.st_mtime_ns:
            return str(cached[2])
        digest = sha256_file(file)
        self.entries[key] = [stat.st_size, stat.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.dirty:
            atomic_write_json(self.path, self.entries)
            self.dirty = False


def resize_film(film: np.ndarray, size: int) -> np.ndarray:
    """Resize a (cropped) film to ``size`` x ``size`` (aspect not kept, as in the paper)."""
    image = Image.fromarray(film)
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0), dtype=np.uint8)


def _thumbnail(film: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, float]:
    scale = min(1.0, THUMBNAIL_SIZE / max(film.shape))
    shape = (max(1, round(film.shape[1] * scale)), max(1, round(film.shape[0] * scale)))
    thumb = np.asarray(Image.fromarray(film).resize(shape, Image.Resampling.BILINEAR), dtype=np.uint8)
    mask_thumb = None
    if mask is not None:
        mask_img = Image.fromarray((mask > 0).astype(np.uint8) * 255).resize(shape, Image.Resampling.NEAREST)
        mask_thumb = np.asarray(mask_img, dtype=np.uint8)
    return thumb, mask_thumb, scale


@lru_cache(maxsize=1)
def decoder_versions() -> dict[str, str]:
    """Versions of the packages that decode films: a cached failure is retried when any of them changes."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pillow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "absent"
    return versions


class FilmCache:
    """Preprocessed films on disk: ``<root>/<hash[:2]>/<hash>.png`` plus a JSON sidecar and QC thumbnails."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def stem(self, content_hash: str) -> Path:
        return self.root / content_hash[:2] / content_hash

    def lookup(self, content_hash: str) -> dict[str, Any] | None:
        """The sidecar of a cached film, or None on a miss (or a half-written entry)."""
        stem = self.stem(content_hash)
        meta_path, image_path = stem.with_suffix(".json"), stem.with_suffix(".png")
        if not (meta_path.is_file() and image_path.is_file()):
            return None
        try:
            return json.loads(meta_path.read_text())
        except (json.JSONDecodeError, OSError):
            return None

    def lookup_failure(self, content_hash: str) -> str | None:
        """The reason a film could not be preprocessed, if that was recorded with today's decoder versions."""
        path = self.stem(content_hash).with_suffix(".failed.json")
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return str(record["reason"]) if record.get("decoders") == decoder_versions() else None

    def store_failure(self, content_hash: str, reason: str) -> None:
        atomic_write_json(self.stem(content_hash).with_suffix(".failed.json"),
                          {"reason": reason, "decoders": decoder_versions()})

    def store(self, content_hash: str, image: np.ndarray, meta: dict[str, Any], thumb: np.ndarray,
              mask_thumb: np.ndarray | None) -> None:
        stem = self.stem(content_hash)
        atomic_write_bytes(stem.with_suffix(".thumb.png"), png_bytes(thumb))
        if mask_thumb is not None:
            atomic_write_bytes(stem.with_suffix(".mask.png"), png_bytes(mask_thumb))
        atomic_write_bytes(stem.with_suffix(".png"), png_bytes(image))
        atomic_write_json(stem.with_suffix(".json"), meta)  # written last: marks the entry complete


def process_film(path: Path, image_id: str, settings: PreprocessSettings, segmenter: LungSegmenter
                 ) -> tuple[np.ndarray, dict[str, Any], np.ndarray, np.ndarray | None]:
    """Decode, crop and resize one film; returns the image, its sidecar metadata and QC thumbnails."""
    decoded = decode_film(path, allowed_modalities=settings.allowed_modalities)
    film = decoded.pixels
    if min(film.shape) < settings.min_size:
        height, width = film.shape
        raise UnreadableImageError(
            path, f"film is {width}x{height} pixels, smaller than the {settings.min_size}-pixel minimum"
        )
    crop = crop_to_lungs(film, segmenter, image_id, margin=settings.margin)
    image = resize_film(crop.image, settings.image_size)
    thumb, mask_thumb, scale = _thumbnail(film, crop.mask)
    meta = {
        "crop_status": crop.status,
        "crop_reason": crop.reason,
        "box": list(crop.box) if crop.box else None,
        "box_thumbnail": [round(v * scale) for v in crop.box] if crop.box else None,
        "film_shape": list(film.shape),
        "notes": decoded.notes,
    }
    return image, meta, thumb, mask_thumb


# Worker-process state for parallel preprocessing (one segmenter per process).
_WORKER: dict[str, Any] = {}


def _init_worker(settings: PreprocessSettings, make_segmenter: Callable[[], LungSegmenter], cache_root: str) -> None:
    _WORKER.update(settings=settings, segmenter=make_segmenter(), cache=FilmCache(Path(cache_root)))


def _work(job: tuple[str, str, str]) -> tuple[str, dict[str, Any] | None, str]:
    path, image_id, content_hash = job
    try:
        image, meta, thumb, mask_thumb = process_film(Path(path), image_id, _WORKER["settings"], _WORKER["segmenter"])
    except UnreadableImageError as err:
        _WORKER["cache"].store_failure(content_hash, err.reason)
        return content_hash, None, err.reason
    except Exception as err:  # one bad film must not sink the run; not cached (may be transient)
        return content_hash, None, f"preprocessing failed ({type(err).__name__}: {err})"
    _WORKER["cache"].store(content_hash, image, meta, thumb, mask_thumb)
    return content_hash, meta, ""


def prepare_cohort(
    listing: CohortListing,
    prepared_dir: str | Path,
    settings: PreprocessSettings,
    make_segmenter: Callable[[], LungSegmenter],
    workers: int = 1,
    progress: bool = True,
) -> PreparedCohort:
    """Preprocess every film of ``listing`` into ``prepared_dir/<settings tag>/`` and index the result.

    ``make_segmenter`` is called only if some film is not cached yet (a U-Net need not load otherwise).
    """
    prepared_dir = Path(prepared_dir)
    folder = prepared_dir / settings.tag()
    cache = FilmCache(folder / "films")
    hashes = HashIndex(prepared_dir / "file_hashes.json")
    skipped = list(listing.skipped)
    first_by_hash: dict[str, FilmRecord] = {}
    pending: list[FilmRecord] = []
    hash_of: dict[str, str] = {}
    for record in progress_bar(listing.records, "hashing files", enabled=progress and len(listing.records) > 200):
        try:
            digest = hashes.content_hash(record.path)
        except OSError as err:
            skipped.append(Skipped(record.image_id, str(record.path), f"cannot read file ({err.strerror or err})"))
            continue
        if digest in first_by_hash:
            other = first_by_hash[digest].image_id
            skipped.append(Skipped(record.image_id, str(record.path), f"identical content to {other} (duplicate film)"))
            continue
        first_by_hash[digest] = record
        hash_of[record.image_id] = digest
        pending.append(record)
    hashes.save()

    metas: dict[str, dict[str, Any]] = {}
    misses: list[FilmRecord] = []
    failures: dict[str, str] = {}
    for record in pending:
        meta = cache.lookup(hash_of[record.image_id])
        known_failure = cache.lookup_failure(hash_of[record.image_id]) if meta is None else None
        if meta is not None:
            metas[record.image_id] = meta
        elif known_failure is not None:
            failures[record.image_id] = known_failure
        else:
            misses.append(record)
    decoded_failures = 0
    if misses:
        jobs = [(str(r.path), r.image_id, hash_of[r.image_id]) for r in misses]
        by_hash = {hash_of[r.image_id]: r for r in misses}
        results: Iterable[tuple[str, dict[str, Any] | None, str]]
        if workers > 1 and len(misses) > 1:
            pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                       initargs=(settings, make_segmenter, str(cache.root)))
            results = pool.map(_work, jobs, chunksize=4)
        else:
            pool = None
            _init_worker(settings, make_segmenter, str(cache.root))
            results = map(_work, jobs)
        try:
            for content_hash, meta, reason in progress_bar(results, f"preprocessing {len(misses)} films",
                                                           total=len(jobs), enabled=progress):
                record = by_hash[content_hash]
                if meta is None:
                    failures[record.image_id] = reason
                    decoded_failures += 1
                else:
                    metas[record.image_id] = meta
        finally:
            if pool is not None:
                pool.shutdown()
            _WORKER.clear()

    films: list[PreparedFilm] = []
    for record in pending:
        if record.image_id in failures:
            skipped.append(Skipped(record.image_id, str(record.path), failures[record.image_id]))
            continue
        meta = metas[record.image_id]
        digest = hash_of[record.image_id]
        films.append(PreparedFilm(
            image_id=record.image_id, patient_id=record.patient_id, label=record.label,
            source_path=str(record.path), content_hash=digest,
            file=str(cache.stem(digest).with_suffix(".png").relative_to(folder)),
            crop_status=meta["crop_status"], crop_reason=meta["crop_reason"], notes="; ".join(meta["notes"]),
            extra={extra_column(k): v for k, v in record.extra}, target=record.target,
        ))
    cohort = PreparedCohort(folder=folder, films=films, skipped=skipped, decoded=len(misses) - decoded_failures)
    write_cohort_index(cohort, settings)
    return cohort


def _write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(header)
            out.writerows(rows)

    atomic_write(path, writer)


def write_cohort_index(cohort: PreparedCohort, settings: PreprocessSettings) -> None:
    """Write ``cohort.csv``, ``preprocess_report.csv`` and ``settings.json`` into the cohort folder."""
    extras = sorted({k for f in cohort.films for k in f.extra})  # the cohort's own columns (site, scanner, ...)
    _write_csv(cohort.cohort_csv, [*BASE_COLUMNS, *extras],
               ([*(getattr(f, k) for k in BASE_COLUMNS), *(f.extra.get(k, "") for k in extras)] for f in cohort.films))
    report_rows = [
        [f.image_id, f.source_path, "ok", "", f.crop_status, f.crop_reason, f.notes] for f in cohort.films
    ] + [[s.image_id, s.path, "skipped", s.reason, "", "", ""] for s in cohort.skipped]
    _write_csv(cohort.report_csv,
               ["image_id", "source_path", "status", "reason", "crop_status", "crop_reason", "notes"], report_rows)
    atomic_write_json(cohort.folder / "settings.json", {"pipeline_version": PIPELINE_VERSION, **asdict(settings)})


def read_cohort_index(folder: str | Path) -> list[PreparedFilm]:
    """Read the films of a prepared cohort folder (as written by ``prepare_cohort``)."""
    path = Path(folder) / COHORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no prepared cohort here (run pneumollm-prepare first)")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [_film(row) for row in rows]


def _film(row: dict[str, str]) -> PreparedFilm:
    """A ``cohort.csv`` row: the suite's columns, then the cohort's own ones into ``extra``."""
    base = {k: row[k] for k in BASE_COLUMNS if k != "target"}
    target = row.get("target") or base["label"]
    return PreparedFilm(**{**base, "label": int(base["label"])}, target=int(target),
                        extra={k: v for k, v in row.items() if k not in BASE_COLUMNS and k is not None})


def cpu_workers(requested: int | None) -> int:
    """Worker processes for preprocessing: ``requested`` or the CPUs available (at most 8)."""
    if requested:
        return max(1, int(requested))
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
