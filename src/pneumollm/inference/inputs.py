"""Films to predict: files, folders (searched recursively) or a manifest CSV, preprocessed as in training.

Every input ends as a row of the output: a film that cannot be used (missing, corrupt, not a radiograph, too
small), a folder without films, a manifest without rows and a second mention of a file already listed are kept
with ``status=skipped`` and the reason (a film's is the one ``pneumollm-prepare`` would give). Folders are
searched by content: a DICOM, PNG, JPEG, TIFF or BMP file is found whatever its name; other files are left out
and counted in a note.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumollm.data.cohort import PATH_COLUMNS, find_column, listed_path, read_csv_rows
from pneumollm.data.dicom import UnreadableImageError
from pneumollm.data.film_source import FilmSource, film_source, is_film_candidate
from pneumollm.data.preprocess import PreprocessSettings, process_film
from pneumollm.errors import UserError
from pneumollm.utils.io import atomic_write
from pneumollm.utils.progress import progress_bar


@dataclass
class InputFilm:
    """One film to predict: where it is, how the output names it, and the manifest's other columns."""

    path: Path
    name: str
    extra: dict[str, str] = field(default_factory=dict)
    image: np.ndarray | None = None  # the model's input (uint8, image_size x image_size) once prepared
    box: tuple[int, int, int, int] | None = None  # the lung crop in the film's pixels
    status: str = "pending"
    reason: str = ""
    source: FilmSource = field(default_factory=FilmSource)  # the file's header facts, once prepared
    crop_status: str = ""  # the lung crop's outcome, once prepared
    shift: str = ""  # why it looks unlike the model's training films (``inference.shift``), once predicted


@dataclass
class GatheredInputs:
    """The films named on the command line, and notes for the console (a manifest read as cp1252, files in
    folders that are not films, files named twice)."""

    films: list[InputFilm]
    notes: list[str] = field(default_factory=list)


def _films_in(folder: Path) -> tuple[list[Path], list[Path]]:
    """(films, other files) under ``folder``, hidden files and folders left out; films by content."""
    files = [p for p in sorted(folder.rglob("*"))
             if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)]
    films = [p for p in files if is_film_candidate(p)]
    chosen = set(films)
    return films, [p for p in files if p not in chosen]


def _folder_note(folder: Path, others: list[Path]) -> str:
    shown = ", ".join(p.relative_to(folder).as_posix() for p in others[:3])
    more = f" and {len(others) - 3} more" if len(others) > 3 else ""
    return (f"{folder}: {len(others)} file(s) left out that are not DICOM, PNG, JPEG, TIFF or BMP films by their "
            f"content ({shown}{more})")


def _from_manifest(manifest: Path, notes: list[str]) -> list[InputFilm]:
    header, rows, read_notes = read_csv_rows(manifest, allow_empty=True)
    notes += read_notes
    column = find_column(header, PATH_COLUMNS)
    if column is None:
        raise UserError(f"{manifest}: no column naming the films ({', '.join(PATH_COLUMNS[:3])}, ...); "
                        f"found {', '.join(header)}")
    films = []
    for line, row in enumerate(rows, start=2):
        rel = (row.get(column) or "").strip()
        extra = {k: str(v) for k, v in row.items() if k not in (column, None)}
        if not rel:
            films.append(InputFilm(manifest, f"{manifest.name}:row {line}", extra, status="skipped",
                                   reason="no path in the manifest row"))
            continue
        films.append(InputFilm(listed_path(rel, manifest.parent)[0], rel, extra))  # also Windows separators
    if not films:
        films.append(InputFilm(manifest, str(manifest), status="skipped", reason="the manifest has no rows"))
    return films


def _mark_duplicates(films: list[InputFilm]) -> int:
    """Skip every later mention of a file already listed (the same resolved path), naming the first; returns
    how many were marked. Each file is prepared and scored once."""
    first: dict[Path, InputFilm] = {}
    marked = 0
    for film in films:
        if film.status != "pending":
            continue
        if film.path in first:
            film.status = "skipped"
            film.reason = f"the same file as {first[film.path].name}, listed before (each file is predicted once)"
            marked += 1
        else:
            first[film.path] = film
    return marked


def gather_inputs(items: Sequence[str | Path]) -> GatheredInputs:
    """The films named by ``items``: files as given, every film (DICOM, PNG, JPEG, TIFF or BMP by content) under a
    folder, the rows of a manifest CSV (a ``path`` column, relative to the CSV; other columns are kept)."""
    films: list[InputFilm] = []
    notes: list[str] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found, others = _films_in(path)
            if others:
                notes.append(_folder_note(path, others))
            films += [InputFilm(p.resolve(), str(p)) for p in found] or [
                InputFilm(path, str(path), status="skipped",
                          reason="no films in this folder or below (DICOM, PNG, JPEG, TIFF or BMP files)")]
        elif path.suffix.lower() == ".csv" and path.is_file():
            films += _from_manifest(path.resolve(), notes)
        elif path.exists():
            films.append(InputFilm(path.resolve(), str(path)))
        else:
            films.append(InputFilm(path, str(path), status="skipped", reason="file not found"))
    if not films:
        raise UserError("no films to predict")
    twice = _mark_duplicates(films)
    if twice:
        notes.append(f"{twice} input(s) name a file listed before: each file is scored once, its later rows are "
                     "skipped and name the first")
    return GatheredInputs(films, notes)


def prepare_inputs(films: list[InputFilm], settings: PreprocessSettings, progress: bool = True) -> None:
    """Decode, crop and resize every pending film in place, as training did (``settings``: the model's recorded
    preprocessing); a film that cannot be used is marked ``skipped`` with the reason."""
    from pneumollm.data.preprocess_plan import build_segmenter

    pending = [f for f in films if f.status == "pending"]
    segmenter = build_segmenter(settings) if pending else None
    for film in progress_bar(pending, f"preparing {len(pending)} films", enabled=progress):
        try:
            image, meta, _thumb, _mask = process_film(film.path, film.name, settings, segmenter)
        except UnreadableImageError as err:
            film.status, film.reason = "skipped", err.reason
            continue
        except Exception as err:  # one bad film never stops the others
            film.status, film.reason = "skipped", f"preprocessing failed ({type(err).__name__}: {err})"
            continue
        film.image, film.status = image, "ok"
        film.box = tuple(meta["box"]) if meta.get("box") else None
        film.crop_status, film.source = str(meta.get("crop_status", "")), film_source(film.path)
        if meta.get("crop_status") == "fallback":
            film.reason = f"lung crop fell back to the whole film: {meta.get('crop_reason', '')}"


def write_rows(path: Path, rows: list[dict[str, Any]], first: Sequence[str]) -> Path:
    """Write ``rows`` as CSV: the ``first`` columns, then the others in order of appearance (atomically)."""
    columns = list(first) + [k for k in dict.fromkeys(k for row in rows for k in row) if k not in first]

    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            out = csv.DictWriter(handle, fieldnames=columns, restval="")
            out.writeheader()
            out.writerows(rows)

    return atomic_write(path, writer)
