"""Reading a cohort: a manifest CSV, or a DICOM folder plus a labels CSV, into film records.

Rows that cannot be used (missing patient id or label, a file that does not exist, an unreadable
DICOM header) are not fatal: they come back as ``Skipped`` entries for the preprocessing report.
Label values that are present but unknown are an error naming the row, since they signal a
mapping the user must decide on; so is a film given two label rows.

CSVs are read as UTF-8 (with or without a BOM), as UTF-16 when they start with a UTF-16 BOM, and otherwise
as cp1252 (Windows-1252, a superset of latin-1's printable characters), with a note on the listing.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pneumollm.data.dicom import UnreadableImageError, read_header
from pneumollm.data.films import RASTER_SUFFIXES, is_dicom
from pneumollm.data.targets import CohortError, LabelTask

# Accepted spellings of the columns (compared case-insensitively, spaces and dashes as underscores).
PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_path")
PATIENT_COLUMNS = ("patient_id", "patientid", "patient")
LABEL_COLUMNS = ("label", "diagnosis", "target", "class")
UID_COLUMNS = ("sop_instance_uid", "sopinstanceuid", "sop_uid")


@dataclass(frozen=True)
class FilmRecord:
    """One usable film of the cohort."""

    image_id: str  # the film's path relative to the manifest / DICOM folder, POSIX form; unique
    path: Path  # absolute path of the source file
    patient_id: str
    label: int  # any pneumoconiosis (0/1)
    extra: tuple[tuple[str, str], ...] = ()  # optional manifest columns, kept for the user's analyses
    target: int | None = None  # what the task trains on (``targets.LabelTask``); None: the label (binary)

    def __post_init__(self) -> None:
        if self.target is None:
            object.__setattr__(self, "target", self.label)


@dataclass(frozen=True)
class Skipped:
    """A film (or label row) left out, with the reason; goes into ``preprocess_report.csv``."""

    image_id: str
    path: str
    reason: str


@dataclass
class CohortListing:
    """What reading a cohort definition produced."""

    records: list[FilmRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the console, e.g. a CSV read as cp1252


def _canonical(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def find_column(header: Iterable[str], candidates: tuple[str, ...]) -> str | None:
    by_canon = {_canonical(h): h for h in header}
    return next((by_canon[c] for c in candidates if c in by_canon), None)


FALLBACK_ENCODING = "cp1252"


def _decode_csv(csv_path: Path) -> tuple[str, list[str]]:
    """The text of a CSV and notes on how it was decoded (see the module docstring for the rules)."""
    data = csv_path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), []
        except UnicodeDecodeError as err:
            raise CohortError(f"{csv_path}: starts with a UTF-16 byte-order mark but byte {err.start} is not "
                              "valid UTF-16; save it as UTF-8") from err
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8"), []
    except UnicodeDecodeError as err:
        offset = bom + err.start
    try:
        text = data[bom:].decode(FALLBACK_ENCODING)
    except UnicodeDecodeError as err:
        raise CohortError(
            f"{csv_path}: byte {bom + err.start} (0x{data[bom + err.start]:02X}) is neither UTF-8 nor "
            f"{FALLBACK_ENCODING} (the first byte that is not UTF-8 is byte {offset}); save the file as UTF-8"
        ) from err
    note = (f"{csv_path}: not UTF-8 (byte {offset}, 0x{data[offset]:02X}, is the first byte that is not); "
            f"read as {FALLBACK_ENCODING} (Windows-1252): check accented names, or save the file as UTF-8")
    return text, [note]


MANIFEST_HEADER = "path,patient_id,label"
LABELS_HEADER = "file,label (or sop_instance_uid,label)"


def _not_a_file(csv_path: Path, header: str) -> CohortError:
    """The error for a CSV path that is a folder or does not exist, pointing at what was probably meant."""
    if not csv_path.is_dir():
        return CohortError(f"{csv_path}: file not found")
    tables = sorted(p.name for p in csv_path.glob("*.csv"))[:5]
    inside = f"; it holds {', '.join(tables)}: give one of them, e.g. {csv_path / tables[0]}" if tables else \
        " and holds no CSV file"
    return CohortError(f"{csv_path} is a folder, not a CSV file (columns {header}){inside}. A folder of DICOM "
                       "films is read with data=dicom_folder data.source.folder=FOLDER data.source.labels=LABELS.csv")


def read_csv_rows(csv_path: Path, header: str = MANIFEST_HEADER, allow_empty: bool = False
                  ) -> tuple[list[str], list[dict[str, str]], list[str]]:
    """Header, rows and decoding notes of a CSV; ``header``: the columns it should have, for error messages.
    A missing file and a folder are errors; so are an empty file and a header without rows, unless
    ``allow_empty`` (prediction lists such a manifest as a skipped input instead)."""
    if not csv_path.is_file():
        raise _not_a_file(csv_path, header)
    text, notes = _decode_csv(csv_path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader) if reader.fieldnames else []
    if allow_empty:
        return list(reader.fieldnames or []), rows, notes
    if not reader.fieldnames:
        raise CohortError(f"{csv_path}: the file is empty; it needs a header row ({header}) and one row per film")
    if not rows:
        raise CohortError(f"{csv_path}: a header ({', '.join(reader.fieldnames)}) but no rows; add one row per "
                          "film")
    return list(reader.fieldnames), rows, notes


WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def listed_path(rel: str, *bases: Path) -> tuple[Path, str]:
    """(absolute path, image id) of a film a CSV lists as ``rel``, relative to the first of ``bases`` where it
    exists. Windows separators are accepted: ``films\\a.png`` is read as ``films/a.png`` when only that exists.
    A path found nowhere resolves against the first base (its id keeps the spelling with ``/``)."""
    spellings = [rel] if "\\" not in rel else [rel, rel.replace("\\", "/")]
    for spelling in spellings:
        for base in bases:
            path = (base / spelling).resolve()
            if path.is_file():
                return path, Path(spelling).as_posix()
    return (bases[0] / spellings[-1]).resolve(), Path(spellings[-1]).as_posix()


def missing_file_reason(rel: str) -> str:
    """Why a listed film was not found, with the likely fix for a Windows drive path."""
    if WINDOWS_DRIVE.match(rel):
        return f"file not found ({rel} is a Windows drive path: list films relative to the CSV's folder, with /)"
    return "file not found"


def _task(task: LabelTask | None, label_map: Mapping[str, int] | None) -> LabelTask:
    if task is not None:
        return task
    return LabelTask(label_map=dict(label_map or {}))


def read_manifest(manifest: str | Path, label_map: Mapping[str, int] | None = None,
                  task: LabelTask | None = None) -> CohortListing:
    """Read a manifest CSV with columns ``path,patient_id,label`` (paths relative to the manifest).

    ``task``: what the labels mean (``targets.LabelTask``: a stage column, finding columns); default binary
    with ``label_map``'s extra spellings.
    """
    manifest = Path(manifest).expanduser().resolve()
    header, rows, notes = read_csv_rows(manifest)
    path_col = find_column(header, PATH_COLUMNS)
    patient_col = find_column(header, PATIENT_COLUMNS)
    missing = [name for name, col in (("path", path_col), ("patient_id", patient_col)) if not col]
    if missing:
        raise CohortError(f"{manifest}: missing column(s) {', '.join(missing)}; found {', '.join(header)}")
    task = _task(task, label_map)
    label_cols = task.columns(header, LABEL_COLUMNS, manifest)
    used = {path_col, patient_col, *label_cols}
    listing = CohortListing(notes=notes)
    seen: dict[str, int] = {}
    backslashes = 0
    for line, row in enumerate(rows, start=2):
        where = f"{manifest} row {line}"
        rel = (row.get(path_col) or "").strip()
        if not rel:
            listing.skipped.append(Skipped(f"<row {line}>", "", "no path in the manifest row"))
            continue
        path, image_id = listed_path(rel, manifest.parent)
        if "\\" in rel and "\\" not in image_id and path.is_file():
            backslashes += 1
        if image_id in seen:
            raise CohortError(f"{where}: {rel!r} is listed twice (also row {seen[image_id]})")
        seen[image_id] = line
        parsed = task.parse(row, label_cols, where)
        patient = (row.get(patient_col) or "").strip()
        reason = (
            parsed if isinstance(parsed, str) else "missing patient id" if not patient
            else missing_file_reason(rel) if not path.is_file() else ""
        )  # fmt: skip
        if reason:
            listing.skipped.append(Skipped(image_id, str(path), reason))
            continue
        target, label = parsed  # type: ignore[misc]
        extra = tuple((k, str(v)) for k, v in row.items() if k not in used and k is not None)
        listing.records.append(FilmRecord(image_id, path, patient, label, extra, target))
    if backslashes:
        listing.notes.append(f"{manifest}: {backslashes} path(s) written with Windows backslashes were read with /")
    return listing


def _scan_films(folder: Path) -> list[Path]:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    return [p for p in files if p.suffix.lower() not in (*RASTER_SUFFIXES, ".csv", ".json", ".txt") and is_dicom(p)]


def read_dicom_folder(
    folder: str | Path, labels_csv: str | Path, label_map: Mapping[str, int] | None = None,
    task: LabelTask | None = None,
) -> CohortListing:
    """Read every DICOM file under ``folder`` and label it from ``labels_csv``.

    The labels CSV has a ``label`` column and either a ``file`` column (path relative to the CSV or to
    ``folder``) or a ``sop_instance_uid`` column matched against the files' SOP Instance UID. An optional
    ``patient_id`` column overrides the files' PatientID tag.
    """
    folder = Path(folder).expanduser().resolve()
    labels_csv = Path(labels_csv).expanduser().resolve()
    if not folder.is_dir():
        raise CohortError(f"{folder}: DICOM folder not found")
    header, rows, notes = read_csv_rows(labels_csv, LABELS_HEADER)
    file_col = find_column(header, PATH_COLUMNS)
    uid_col = find_column(header, UID_COLUMNS)
    patient_col = find_column(header, PATIENT_COLUMNS)
    if not (file_col or uid_col):
        raise CohortError(
            f"{labels_csv}: need a 'file' or 'sop_instance_uid' column besides the labels; found {', '.join(header)}"
        )
    task = _task(task, label_map)
    label_cols = task.columns(header, LABEL_COLUMNS, labels_csv)
    by_file: dict[Path, tuple[int, dict[str, str]]] = {}
    by_uid: dict[str, tuple[int, dict[str, str]]] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{labels_csv} row {line}"
        if file_col and (row.get(file_col) or "").strip():
            rel = row[file_col].strip()
            key, _ = listed_path(rel, labels_csv.parent, folder)
            if key in by_file:
                raise CohortError(f"{where}: {rel!r} names the same file as row {by_file[key][0]} ({key}); "
                                  "give each film one label row")
            by_file[key] = (line, row)
        elif uid_col and (row.get(uid_col) or "").strip():
            uid = row[uid_col].strip()
            if uid in by_uid:
                raise CohortError(f"{where}: SOP Instance UID {uid} is also in row {by_uid[uid][0]}; "
                                  "give each film one label row")
            by_uid[uid] = (line, row)
    listing = CohortListing(notes=notes)
    matched: set[int] = set()
    for path in _scan_films(folder):
        image_id = path.relative_to(folder).as_posix()
        entry = by_file.get(path)
        header_info = None
        if entry is None or not (patient_col and (entry[1].get(patient_col) or "").strip()):
            try:
                header_info = read_header(path)
            except UnreadableImageError as err:
                listing.skipped.append(Skipped(image_id, str(path), err.reason))
                if entry is not None:
                    matched.add(entry[0])
                continue
            if entry is None:
                entry = by_uid.get(header_info.sop_instance_uid)
        if entry is None:
            listing.skipped.append(Skipped(image_id, str(path), "no label row for this file"))
            continue
        line, row = entry
        matched.add(line)
        parsed = task.parse(row, label_cols, f"{labels_csv} row {line}")
        patient = (row.get(patient_col) or "").strip() if patient_col else ""
        if not patient and header_info is not None:
            patient = header_info.patient_id
        if isinstance(parsed, str) or not patient:
            reason = parsed if isinstance(parsed, str) else "missing patient id"
            listing.skipped.append(Skipped(image_id, str(path), reason))
            continue
        target, label = parsed
        used = {file_col, uid_col, patient_col, *label_cols}
        extra = tuple((k, str(v)) for k, v in row.items() if k not in used and k is not None)
        listing.records.append(FilmRecord(image_id, path, patient, label, extra, target))
    for key, (line, row) in by_file.items():
        if line not in matched:
            rel = (row.get(file_col) or "").strip() if file_col else ""
            listing.skipped.append(_unmatched_file_row(key, rel, line, folder))
    for uid, (line, _row) in by_uid.items():
        if line not in matched:
            listing.skipped.append(Skipped(uid, "", f"labels row {line}: no matching DICOM file in {folder}"))
    return listing


def _unmatched_file_row(path: Path, rel: str, line: int, folder: Path) -> Skipped:
    """Why the file that labels row ``line`` names (``rel``, resolved to ``path``) is not among the scanned films."""
    if not path.is_file():
        return Skipped(rel, "", f"labels row {line}: no matching DICOM file in {folder}")
    if not path.is_relative_to(folder):
        return Skipped(rel, str(path), f"labels row {line}: {rel} is outside the DICOM folder {folder}")
    if path.stat().st_size == 0:
        return Skipped(rel, str(path), f"labels row {line}: {rel} is empty (0 bytes)")
    if not is_dicom(path):
        return Skipped(rel, str(path), f"labels row {line}: {rel} is not a DICOM file (no DICM marker)")
    why = "is a hidden file" if path.name.startswith(".") else f"has the suffix {path.suffix}"
    return Skipped(rel, str(path), f"labels row {line}: {rel} {why}, which the DICOM folder scan leaves out")
