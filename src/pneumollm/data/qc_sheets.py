"""QC sheets of a prepared cohort, drawn from the cache's thumbnails (no film is decoded again)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pneumollm.data.lungs.qc import QCItem, write_qc_sheet
from pneumollm.data.preprocess import PreparedCohort, PreparedFilm

LABEL_NAMES = {0: "normal", 1: "pneumoconiosis"}


def _item(cohort_folder: Path, film: PreparedFilm) -> QCItem:
    stem = (cohort_folder / film.file).with_suffix("")
    meta = json.loads(stem.with_suffix(".json").read_text())
    thumb = np.asarray(Image.open(stem.with_suffix(".thumb.png")).convert("L"))
    mask_path = stem.with_suffix(".mask.png")
    mask = np.asarray(Image.open(mask_path)) > 0 if mask_path.is_file() else None
    box = tuple(meta["box_thumbnail"]) if meta.get("box_thumbnail") else None
    status = film.crop_status + (f": {film.crop_reason}" if film.crop_reason else "")
    return QCItem(image=thumb, mask=mask, box=box, title=f"{film.image_id}\n{LABEL_NAMES[film.label]} · {status}")


def write_cohort_qc(cohort: PreparedCohort, max_films: int = 64, columns: int = 8) -> list[Path]:
    """Write ``qc/qc_sheet_NN.png`` into the cohort folder: films whose crop fell back first, then the rest."""
    films = sorted(cohort.films, key=lambda f: (f.crop_status != "fallback", f.image_id))
    sheets = []
    for number, start in enumerate(range(0, len(films), max_films), start=1):
        items = [_item(cohort.folder, film) for film in films[start:start + max_films]]
        sheets.append(write_qc_sheet(items, cohort.folder / "qc" / f"qc_sheet_{number:02d}.png", columns=columns))
    return sheets
