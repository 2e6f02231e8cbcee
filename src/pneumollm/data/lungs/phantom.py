"""A drawn chest-like film with a known lung mask, for tests and quick checks of the crop stage."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def drawn_chest(height: int = 400, width: int = 360, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An 8-bit PA-chest-like film (lungs dark) and its boolean lung mask.

    Dark air around a bright body, two dark lung fields either side of a bright mediastinum, a bright
    diaphragm below, rib shadows across the lungs, a smooth top-to-bottom brightness gradient and noise.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    v, u = rows / height, cols / width  # 0..1 down and across
    body = (np.abs(u - 0.5) < 0.44 - 0.05 * np.clip(0.2 - v, 0, None) * 5) & (v > 0.04)
    lungs = np.zeros((height, width), dtype=bool)
    for centre in (0.30, 0.70):
        inside = ((u - centre) / 0.15) ** 2 + ((v - 0.46) / 0.32) ** 2 < 1.0
        lungs |= inside & (np.abs(u - 0.5) > 0.07) & (v < 0.74)
    film = np.where(body, 0.78, 0.05)
    film = np.where(lungs, 0.32, film)
    film += 0.12 * (1 - v) * body  # shoulders and apices brighter than the bases
    ribs = 0.06 * (np.sin(2 * np.pi * (v * 9 + 2.5 * (u - 0.5) ** 2)) > 0.6)
    film += ribs * lungs
    film = ndimage.gaussian_filter(film, 1.5) + rng.normal(0.0, 0.02, film.shape)
    return (np.clip(film, 0.0, 1.0) * 255).round().astype(np.uint8), lungs
