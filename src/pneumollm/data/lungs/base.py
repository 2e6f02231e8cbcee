"""The contract of a lung segmenter used by the preprocessing stage's crop step."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class LungSegmenter(Protocol):
    """Maps an 8-bit greyscale film (lungs dark) to a boolean lung mask of the same shape.

    ``image_id`` lets segmenters that read precomputed masks (CheXmask) find the right row.
    Returning ``None`` means "no mask available"; the crop step then keeps the whole film and
    records the reason given by ``last_failure`` in the preprocessing report.
    """

    name: str

    def __call__(self, image: np.ndarray, image_id: str) -> np.ndarray | None: ...


class NoSegmenter:
    """``lungs=none``: no segmentation, the whole film is kept."""

    name = "none"

    def __call__(self, image: np.ndarray, image_id: str) -> np.ndarray | None:
        return None
