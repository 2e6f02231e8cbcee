"""DICOM films to 8-bit greyscale with pydicom's own LUT functions (modality LUT, then the default VOI)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi, apply_voi_lut

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


EMPTY_FILE = "file is empty (0 bytes)"


def check_not_empty(path: str | Path) -> None:
    """Raise ``UnreadableImageError`` saying so for a 0-byte file (missing files are left to the reader)."""
    try:
        empty = Path(path).stat().st_size == 0
    except OSError:
        return
    if empty:
        raise UnreadableImageError(path, EMPTY_FILE)


def read_header(path: str | Path) -> DicomHeader:
    """Read the identifying tags of a DICOM file (pixel data is not read)."""
    check_not_empty(path)
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


def _voi_kind(ds: pydicom.Dataset) -> str | None:
    """Which VOI transform ``apply_voi_lut`` applies (its own tests): ``"lut"``, ``"window"`` or None."""
    items = ds.get("VOILUTSequence")
    if items and None not in (items[0].get("LUTDescriptor"), items[0].get("LUTData")):
        return "lut"  # preferred to a window when both are present, as apply_voi_lut does by default
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _lut_bits(ds: pydicom.Dataset, notes: list[str]) -> int:
    """Bits per entry of the first VOI LUT: its descriptor's, unless every entry fits in fewer.

    Files that store 12-bit entries in a LUT declared as 16 bits are common; taking the declared range there
    would turn the film nearly black, so the entries' own range is used and the notes say so.
    """
    entries, first, bits = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
    outputs = apply_voi(np.arange(first, first + (entries or 2**16), dtype=np.int64), ds, index=0)
    used = max(8, int(outputs.max()).bit_length())
    if used < bits:
        notes.append(f"VOI LUT declares {bits} bits per entry but its entries fit in {used}: "
                     f"output range 0..{2**used - 1}")
        return used
    return bits


def _voi_output_range(ds: pydicom.Dataset, kind: str, notes: list[str]) -> tuple[float, float]:
    """The DICOM output range ``(y_min, y_max)`` of the default VOI transform (``y_min`` maps to black).

    A VOI LUT outputs ``0 .. 2**n - 1`` with ``n`` the third value of its LUT Descriptor (or fewer bits
    when every entry fits in them, see ``_lut_bits``). A window (LINEAR,
    LINEAR_EXACT or SIGMOID) outputs pydicom's ``[y_min, y_max]`` for the dataset (set by BitsStored,
    PixelRepresentation, a Modality LUT Sequence, RescaleSlope/Intercept): found exactly by pushing -inf and
    +inf through pydicom's windowing, which the linear functions clip to those bounds and the sigmoid's
    ``y_range / (1 + exp(-4 (x - c) / w)) + y_min`` reaches at infinity. ``y_max`` is below ``y_min`` when
    RescaleSlope is negative.
    """
    if kind == "lut":
        return 0.0, float(2 ** _lut_bits(ds, notes) - 1)
    low, high = apply_voi_lut(np.array([-np.inf, np.inf]), ds, index=0)
    return float(low), float(high)


def _apply_default_voi(values: np.ndarray, ds: pydicom.Dataset, notes: list[str]
                       ) -> tuple[np.ndarray, tuple[float, float]] | None:
    """The file's default VOI transform of ``values`` and its output range; None (with a note) when there is none."""
    kind = _voi_kind(ds)
    if kind is None:
        notes.append("no VOI window or LUT in the file: scaled from the pixel min/max range")
        return None
    try:
        return apply_voi_lut(values, ds, index=0), _voi_output_range(ds, kind, notes)
    except (ValueError, NotImplementedError, IndexError, struct.error) as err:  # e.g. a Window Width of 0
        notes.append(f"VOI {kind} unusable ({err}): scaled from the pixel min/max range")
        return None


def to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linearly map ``low`` to 0 and ``high`` to 255 with clipping (``high < low`` inverts the mapping)."""
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def decode_dicom(path: str | Path, allowed_modalities: tuple[str, ...] | None = RADIOGRAPH_MODALITIES) -> DecodedFilm:
    """Decode a DICOM radiograph to an 8-bit film in which lungs are dark.

    Modality LUT (rescale) first, then the file's default VOI transform (the first VOI LUT, else the first
    WindowCenter/WindowWidth pair), with pydicom's own functions; the transform's DICOM output range
    (``_voi_output_range``) becomes 0..255 and MONOCHROME1 films are inverted. A file without VOI tags, or
    with unusable ones (a zero window width), is scaled from its min/max range instead and the notes say so.
    Raises ``UnreadableImageError`` with a short reason for anything that cannot be decoded.
    """
    notes: list[str] = []
    check_not_empty(path)
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
    voi = _apply_default_voi(values, ds, notes)
    if voi is None:
        low, high = float(values.min()), float(values.max())
    else:
        values, (low, high) = voi
    film = to_uint8(values, low, high)
    if photometric == "MONOCHROME1":
        film = 255 - film
    return DecodedFilm(pixels=film, notes=notes)
