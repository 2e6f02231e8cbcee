"""QC sheets: a PNG grid with each film, its lung outline and its crop rectangle."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pneumollm.data.lungs.phantom import drawn_chest
from pneumollm.data.lungs.qc import BOX_COLOUR, MASK_COLOUR, QCItem, write_qc_sheet


def colour_pixels(path, hex_colour: str, tolerance: int = 40) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).max(axis=-1) < tolerance).sum())


def test_sheet_draws_outline_and_box(tmp_path):
    film, mask = drawn_chest()
    box = (40, 30, 320, 330)
    plain = write_qc_sheet([QCItem(film, title="a.dcm | normal | not_cropped")], tmp_path / "plain.png")
    drawn = write_qc_sheet([QCItem(film, mask, box, "a.dcm | normal | cropped")], tmp_path / "drawn.png")
    assert colour_pixels(plain, MASK_COLOUR) == 0 and colour_pixels(plain, BOX_COLOUR) == 0
    assert colour_pixels(drawn, MASK_COLOUR) > 100
    assert colour_pixels(drawn, BOX_COLOUR) > 100


def test_grid_grows_with_the_films_and_accepts_mappings(tmp_path):
    film, mask = drawn_chest(300, 260)
    items = [{"image": film, "mask": mask, "box": None, "title": f"film {i}"} for i in range(7)]
    path = write_qc_sheet(items, tmp_path / "sub" / "sheet.png", columns=3)
    one_row = write_qc_sheet(items[:3], tmp_path / "row.png", columns=3)
    width, height = Image.open(path).size
    row_width, row_height = Image.open(one_row).size
    assert width == row_width and height > 2.5 * row_height  # 3 rows of 3


def test_large_films_are_shrunk(tmp_path):
    film, mask = drawn_chest(2000, 1800)
    path = write_qc_sheet([QCItem(film, mask, (100, 100, 1500, 1700), "big")], tmp_path / "big.png", columns=1)
    assert max(Image.open(path).size) < 600


def test_bad_items_are_clear_errors(tmp_path):
    film, _ = drawn_chest(100, 100)
    with pytest.raises(ValueError, match="no films"):
        write_qc_sheet([], tmp_path / "empty.png")
    with pytest.raises(ValueError, match="mask shape"):
        write_qc_sheet([QCItem(film, np.zeros((5, 5), bool), None, "x")], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="2-D"):
        write_qc_sheet([QCItem(np.zeros((5, 5, 3), np.uint8))], tmp_path / "rgb.png")
