"""``lungs=chexmask``: precomputed lung masks from a CheXmask database CSV (the paper's own masks).

A CheXmask CSV has one row per film: the film's file name (``Image Index`` in the ChestX-ray8 file),
the run-length encoded ``Left Lung`` and ``Right Lung`` masks and the mask's ``Height`` and ``Width``.
The full files run to gigabytes, so the CSV is scanned once for the byte offset of each row and a
row is read back only when its film comes up.
"""

from __future__ import annotations

import csv as csvlib
import io
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from pneumollm.data.lungs.components import resize_mask

MASK_COLUMNS = ("Left Lung", "Right Lung", "Height", "Width")
# Field sizes: a lung's run-length code is tens of kilobytes, above csv's default field limit.
csvlib.field_size_limit(2**31 - 1)


def rle_decode(rle: str, shape: tuple[int, int], where: str = "") -> np.ndarray:
    """Boolean mask of ``shape`` from CheXmask run-length code: ``start length`` pairs, starts 1-based, row-major.

    An empty code gives an empty mask. ``where`` names the source in error messages.
    """
    height, width = shape
    size = height * width
    text = "" if rle is None else str(rle).strip()
    if not text or text.lower() == "nan":
        return np.zeros(shape, dtype=bool)
    try:
        numbers = np.array(text.split(), dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"{where}: run-length code holds a non-integer value ({err})") from err
    if numbers.size % 2:
        raise ValueError(f"{where}: run-length code has an odd count of numbers ({numbers.size})")
    starts, lengths = numbers[0::2] - 1, numbers[1::2]
    if starts.size and (starts.min() < 0 or lengths.min() < 0 or (starts + lengths).max() > size):
        raise ValueError(f"{where}: run-length code runs outside a {height}x{width} mask")
    # Mark run starts +1 and run ends -1; the running sum is > 0 inside runs (also for overlapping runs).
    steps = np.zeros(size + 1, dtype=np.int32)
    np.add.at(steps, starts, 1)
    np.add.at(steps, starts + lengths, -1)
    return (np.cumsum(steps[:-1]) > 0).reshape(shape)


def rle_encode(mask: np.ndarray) -> str:
    """CheXmask run-length code of a boolean mask (inverse of :func:`rle_decode`)."""
    flat = np.concatenate([[0], mask.astype(np.int8).ravel(), [0]])
    changes = np.flatnonzero(np.diff(flat))
    starts, ends = changes[0::2], changes[1::2]
    return " ".join(f"{start + 1} {end - start}" for start, end in zip(starts, ends))


def _base_name(name: str) -> str:
    return PurePosixPath(name.strip().replace("\\", "/")).name


def _path_keys(name: str) -> list[str]:
    """Keys a film name is matched on: the name as given, its base name, its base name without extension."""
    name = name.strip().replace("\\", "/")
    base = _base_name(name)
    keys = [name, base, PurePosixPath(base).stem]
    return list(dict.fromkeys(key for key in keys if key))


def _records(handle: io.BufferedReader) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw bytes) of each CSV record; a quoted field may span lines."""
    offset = handle.tell()
    pending, start = b"", offset
    for line in handle:
        if not pending:
            start = offset
        pending += line
        offset += len(line)
        if pending.count(b'"') % 2 == 0:  # all quotes closed: the record is complete
            yield start, pending
            pending = b""
    if pending:
        yield start, pending


class ChexmaskIndex:
    """Byte offsets of the rows of a CheXmask CSV, keyed by film name, base name and stem."""

    def __init__(self, csv_path: str | Path, id_column: str = "Image Index") -> None:
        self.path = Path(csv_path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"CheXmask CSV {self.path} does not exist (lungs.csv)")
        self.id_column = id_column
        self.offsets: dict[str, int] = {}
        self.ambiguous: set[str] = set()
        with self.path.open("rb") as handle:
            header_line = handle.readline()
            self.columns = next(csvlib.reader([header_line.decode("utf-8-sig")]))
            missing = [c for c in (id_column, *MASK_COLUMNS) if c not in self.columns]
            if missing:
                raise ValueError(f"CheXmask CSV {self.path} lacks the column(s) {missing}; it has {self.columns}")
            id_position = self.columns.index(id_column)
            rows = 0
            for offset, raw in _records(handle):
                fields = next(csvlib.reader([raw.decode("utf-8")]), [])
                if len(fields) <= id_position:
                    continue
                rows += 1
                for key in _path_keys(fields[id_position]):
                    if key in self.offsets and self.offsets[key] != offset:
                        self.ambiguous.add(key)
                    self.offsets.setdefault(key, offset)
        self.rows = rows

    def find(self, image_id: str) -> tuple[int | None, str]:
        """Offset of the row for ``image_id`` (tried as given, by base name, by stem), or None and why."""
        for key in _path_keys(image_id):
            if key in self.ambiguous:
                return None, f"several CheXmask rows match {key!r}"
            if key in self.offsets:
                return self.offsets[key], ""
        return None, f"no CheXmask row for {_base_name(image_id)!r}"

    def row(self, offset: int) -> dict[str, str]:
        """The CSV row stored at byte ``offset``, as a column -> value dict."""
        with self.path.open("rb") as handle:
            handle.seek(offset)
            raw = next(_records(handle))[1]
        return dict(zip(self.columns, next(csvlib.reader([raw.decode("utf-8")]))))


class ChexmaskSegmenter:
    """Lung mask = union of CheXmask's left and right lung masks, resized (nearest) to the film.

    A film without a row, with an ambiguous name, or whose mask has another aspect ratio than the
    film (so a plain resize would misplace it) gets None with the reason in ``last_failure``.
    """

    name = "chexmask"

    def __init__(self, csv: str | Path | None, id_column: str = "Image Index", max_aspect_change: float = 0.02) -> None:
        if csv is None or str(csv).strip() == "":
            raise FileNotFoundError("lungs=chexmask needs the CheXmask database CSV: pass lungs.csv=/path/to/file.csv")
        self.index = ChexmaskIndex(csv, id_column)
        self.max_aspect_change = max_aspect_change
        self.last_failure = ""

    def lung_mask(self, image_id: str) -> np.ndarray | None:
        """CheXmask's lung mask (both lungs) at its own size, or None (with ``last_failure`` set)."""
        offset, why = self.index.find(image_id)
        if offset is None:
            self.last_failure = why
            return None
        row = self.index.row(offset)
        where = f"{self.index.path} row {row.get(self.index.id_column)!r}"
        try:
            shape = (int(float(row["Height"])), int(float(row["Width"])))
        except ValueError as err:
            raise ValueError(f"{where}: Height/Width are not numbers ({err})") from err
        return rle_decode(row["Left Lung"], shape, where) | rle_decode(row["Right Lung"], shape, where)

    def __call__(self, image: np.ndarray, image_id: str) -> np.ndarray | None:
        mask = self.lung_mask(image_id)
        if mask is None:
            return None
        height, width = image.shape[:2]
        mask_height, mask_width = mask.shape
        aspect_change = abs((height / width) / (mask_height / mask_width) - 1.0)
        if aspect_change > self.max_aspect_change:
            self.last_failure = (
                f"CheXmask mask is {mask_height}x{mask_width} but the film is {height}x{width} "
                "(another aspect ratio: the mask cannot be placed by resizing)"
            )
            return None
        self.last_failure = ""
        return resize_mask(mask, (height, width))

