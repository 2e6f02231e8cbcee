"""DICOM films to 8-bit greyscale with pydicom's own LUT functions (modality LUT, then the default VOI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

# Modalities that hold projection radiographs; OT covers secondary captures of films.
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG", "OT")
SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")


class UnreadableImageError(ValueError):
    """A film that cannot be turned into an 8-bit image; ``reason`` goes into the preprocessing report."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class DecodedFilm:
    """An 8-bit film (lungs dark) and what decoding had to note about it."""

    pixels: np.ndarray  # uint8, HxW
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DicomHeader:
    """The identifying tags the cohort reader needs, read without decoding pixels."""

    patient_id: str
    sop_instance_uid: str
    study_instance_uid: str
    modality: str


def read_header(path: str | Path) -> DicomHeader:
    """Read the identifying tags of a DICOM file (pixel data is not read)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as err:
        raise UnreadableImageError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from err
    return DicomHeader(
        patient_id=str(ds.get("PatientID", "") or "").strip(),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or "").strip(),
        study_instance_uid=str(ds.get("StudyInstanceUID", "") or "").strip(),
        modality=str(ds.get("Modality", "") or "").strip().upper(),
    )


def _has_voi(ds: pydicom.Dataset) -> bool:
    has_window = "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowCenter is not None
    return has_window or bool(ds.get("VOILUTSequence"))


def _voi_output_range(ds: pydicom.Dataset, dtype: np.dtype) -> tuple[float, float]:
    """The output range of the file's default VOI transform, found by pushing two extreme values through it."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        extremes = np.array([info.min, info.max], dtype=dtype)
    else:
        extremes = np.array([-1e12, 1e12], dtype=np.float64)
    low, high = np.asarray(apply_voi_lut(extremes, ds, index=0), dtype=np.float64)
    return float(min(low, high)), float(max(low, high))


def to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linearly map ``[low, high]`` to ``[0, 255]`` with clipping."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def decode_dicom(path: str | Path, allowed_modalities: tuple[str, ...] | None = RADIOGRAPH_MODALITIES) -> DecodedFilm:
    """Decode a DICOM radiograph to an 8-bit film in which lungs are dark.

    Modality LUT (rescale) first, then the file's default VOI transform (the first WindowCenter/WindowWidth
    pair, or the first VOI LUT), with pydicom's own functions; MONOCHROME1 films are inverted. A file without
    VOI tags is scaled from its min/max range instead and the returned notes say so.
    Raises ``UnreadableImageError`` with a short reason for anything that cannot be decoded.
    """
    notes: list[str] = []
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as err:
        raise UnreadableImageError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from err
    modality = str(ds.get("Modality", "") or "").upper()
    if allowed_modalities and modality and modality not in allowed_modalities:
        expected = ", ".join(allowed_modalities)
        raise UnreadableImageError(path, f"modality {modality} is not a radiograph (expected one of {expected})")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UnreadableImageError(path, "DICOM file has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise UnreadableImageError(
            path, f"unsupported photometric interpretation {photometric or '(missing)'} (need MONOCHROME1/2)"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise UnreadableImageError(path, f"multi-frame DICOM ({ds.NumberOfFrames} frames), expected one film")
    try:
        stored = ds.pixel_array
    except Exception as err:  # pydicom raises many types for truncated data or missing codecs
        raise UnreadableImageError(path, f"pixel data cannot be decoded ({type(err).__name__}: {err})") from err
    if stored.ndim != 2:
        raise UnreadableImageError(path, f"expected a 2-D greyscale film, got pixel array of shape {stored.shape}")
    values = apply_modality_lut(stored, ds)
    if _has_voi(ds):
        low, high = _voi_output_range(ds, values.dtype)
        values = apply_voi_lut(values, ds, index=0)
    else:
        low, high = float(values.min()), float(values.max())
        notes.append("no VOI window or LUT in the file: scaled from the pixel min/max range")
    film = to_uint8(values, low, high)
    if photometric == "MONOCHROME1":
        film = 255 - film
    return DecodedFilm(pixels=film, notes=notes)
