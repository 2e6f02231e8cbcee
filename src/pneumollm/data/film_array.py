"""A prepared cohort's films as one uint8 array file, written once and memory-mapped by every later run.

Decoding a few hundred PNGs is most of a fold's start-up once the films are cached; one ``.npy`` file of all
films (``films-<key>.npy`` in the cohort folder) is read in milliseconds. The key covers the image size and
each film's cached PNG (name, size and modification time), so a changed, added or removed film makes a new
array; older arrays of the folder are removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pneumollm.data.preprocess import PreparedFilm
from pneumollm.utils.io import atomic_write, sha256_json

ARRAY_PREFIX = "films-"


def _key(folder: Path, films: Sequence[PreparedFilm], size: int) -> str:
    stats = []
    for film in films:
        stat = (folder / film.file).stat()
        stats.append((film.file, stat.st_size, stat.st_mtime_ns))
    return sha256_json({"size": size, "films": stats})[:16]


def load_film_array(folder: str | Path, films: Sequence[PreparedFilm], size: int) -> np.ndarray:
    """The films' images as uint8 [N, size, size] in the given order (memory-mapped when already on disk)."""
    folder = Path(folder)
    path = folder / f"{ARRAY_PREFIX}{_key(folder, films, size)}.npy"
    if path.is_file():
        try:
            array = np.load(path, mmap_mode="r")
            if array.shape == (len(films), size, size) and array.dtype == np.uint8:
                return array
        except (OSError, ValueError):  # cut short by a kill: make it again
            pass
    array = np.empty((len(films), size, size), dtype=np.uint8)
    for i, film in enumerate(films):
        with Image.open(folder / film.file) as image:
            array[i] = np.asarray(image.convert("L"), dtype=np.uint8)

    def writer(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.save(handle, array)

    atomic_write(path, writer)
    for old in folder.glob(f"{ARRAY_PREFIX}*.npy"):
        if old != path:
            old.unlink(missing_ok=True)
    return array
