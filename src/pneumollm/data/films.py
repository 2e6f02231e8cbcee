"""Read any supported film (DICOM, PNG, JPEG) as an 8-bit greyscale array in which lungs are dark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pneumollm.data.dicom import (
    RADIOGRAPH_MODALITIES,
    DecodedFilm,
    UnreadableImageError,
    check_not_empty,
    decode_dicom,
    to_uint8,
)

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def is_dicom(path: str | Path) -> bool:
    """True for files with the DICOM preamble marker, or a .dcm/.dicom suffix."""
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    if path.suffix.lower() in RASTER_SUFFIXES:
        return False
    from pydicom.misc import is_dicom as has_dicom_preamble

    try:
        return has_dicom_preamble(path)
    except OSError:
        return False


def decode_raster(path: str | Path) -> DecodedFilm:
    """Decode a PNG/JPEG/TIFF film to 8-bit greyscale (16-bit files are scaled from their min/max range)."""
    notes: list[str] = []
    check_not_empty(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                values = np.asarray(img, dtype=np.float64)
                notes.append(f"{img.mode} raster scaled from its min/max range to 8 bit")
                return DecodedFilm(to_uint8(values, float(values.min()), float(values.max())), notes)
            if img.mode != "L":
                notes.append(f"converted {img.mode} to greyscale")
                img = img.convert("L")
            return DecodedFilm(np.asarray(img, dtype=np.uint8).copy(), notes)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(path, f"not a readable image ({type(err).__name__}: {err})") from err


def decode_film(path: str | Path, allowed_modalities: tuple[str, ...] | None = RADIOGRAPH_MODALITIES) -> DecodedFilm:
    """Decode a film of any supported format; raises ``UnreadableImageError`` with the reason."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableImageError(path, "file not found")
    if is_dicom(path):
        return decode_dicom(path, allowed_modalities=allowed_modalities)
    return decode_raster(path)
