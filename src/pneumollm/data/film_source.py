"""What a film file is before preprocessing, read from its header only: format, native size, bits, modality.

``film_format`` tells a film by its content (the DICOM marker, PIL's detection of PNG/JPEG/TIFF/BMP), so a folder
scan finds films without a file extension. ``film_source`` reads the header (``pydicom.dcmread`` stops before
the pixel data; PIL opens lazily), never the pixels, so profiling thousands of films costs seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pneumollm.data.films import RASTER_SUFFIXES, is_dicom
from pneumollm.utils.io import atomic_write_json

DICOM = "DICOM"
RASTER_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # the raster formats ``films.decode_raster`` reads through PIL
_RASTER_BITS = {"1": 1, "L": 8, "LA": 8, "P": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8, "I": 32, "F": 32}
SOURCES_FILE = "film_sources.json"  # memo of training films' sources in the prepared folder, by content hash


@dataclass(frozen=True)
class FilmSource:
    """A film file as stored: ``format`` DICOM/PNG/JPEG/TIFF/BMP ("" when unknown); the rest None/"" when the
    header does not say (``modality`` and ``photometric`` exist for DICOM only)."""

    format: str = ""
    width: int | None = None
    height: int | None = None
    bits: int | None = None  # DICOM BitsStored; a raster's bits per channel
    modality: str = ""
    photometric: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilmSource:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})


def _raster_format(path: Path) -> str | None:
    """PIL's name of a PNG/JPEG/TIFF/BMP file (detected from its bytes), else None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=RASTER_FORMATS) as image:
            return str(image.format)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def film_format(path: str | Path) -> str | None:
    """``DICOM``, ``PNG``, ``JPEG``, ``TIFF`` or ``BMP`` by the file's content (the DICOM preamble's ``DICM``
    marker, PIL's format detection); None for anything else (text, archives, other images)."""
    from pydicom.misc import is_dicom as has_dicom_marker

    path = Path(path)
    try:
        if has_dicom_marker(path):
            return DICOM
    except OSError:
        return None
    return _raster_format(path)


def is_film_candidate(path: Path) -> bool:
    """Whether a folder scan should offer ``path`` as a film: a film suffix (a broken file then gets a skipped
    row with its reason) or, whatever the suffix, film content (``film_format``)."""
    if path.suffix.lower() in (*RASTER_SUFFIXES, ".dcm", ".dicom"):
        return True
    return film_format(path) is not None


def _dicom_source(path: Path) -> FilmSource:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True,
                         specific_tags=["Rows", "Columns", "BitsStored", "Modality", "PhotometricInterpretation"])

    def number(tag: str) -> int | None:
        value = ds.get(tag)
        return int(value) if value not in (None, "") else None

    return FilmSource(DICOM, number("Columns"), number("Rows"), number("BitsStored"),
                      str(ds.get("Modality", "") or "").strip().upper(),
                      str(ds.get("PhotometricInterpretation", "") or "").strip().upper())


def film_source(path: str | Path) -> FilmSource:
    """The header facts of one film file; ``FilmSource()`` (all unknown) when the file cannot be read."""
    from PIL import Image

    path = Path(path)
    try:
        if is_dicom(path):
            return _dicom_source(path)
        with Image.open(path, formats=RASTER_FORMATS) as image:
            bits = 16 if image.mode.startswith("I;16") else _RASTER_BITS.get(image.mode)
            return FilmSource(str(image.format), image.width, image.height, bits)
    except Exception:  # any unreadable header: the film's decoding gives the reason, this only profiles
        return FilmSource()


def cached_sources(files: Sequence[tuple[str, str | Path]], memo_dir: Path) -> list[FilmSource]:
    """``film_source`` of each ``(content hash, path)``, memoised in ``memo_dir/film_sources.json`` by content
    hash, so every fold and arm of a cohort reads each header once."""
    import json

    memo_path = memo_dir / SOURCES_FILE
    try:
        memo: dict[str, dict[str, Any]] = json.loads(memo_path.read_text())
    except (OSError, json.JSONDecodeError):
        memo = {}
    sources, added = [], False
    for digest, path in files:
        if digest in memo:
            sources.append(FilmSource.from_dict(memo[digest]))
            continue
        source = film_source(path)
        sources.append(source)
        if source.format:  # an unreadable file is not remembered: it may be back next time
            memo[digest], added = asdict(source), True
    if added:
        with contextlib.suppress(OSError):  # a read-only prepared folder: the headers are read again next time
            atomic_write_json(memo_path, memo)
    return sources
