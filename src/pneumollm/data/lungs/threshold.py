"""``lungs=threshold``: a classical lung segmenter that needs no weights.

Steps, on a copy of the film shrunk to ``working_size`` pixels (long side; skimage's anti-aliased resize,
computed as two sparse products by :func:`shrink_film`):

1. contrast: stretch the 1st-99th percentiles to [0, 1] and equalise locally (CLAHE), which evens out
   the top-to-bottom brightness gradient of chest films;
2. dark regions: smooth (so ribs and nodules do not break the lungs apart), threshold at the Otsu
   level of the film's central window (the air outside the body does not drag it down), then open
   a little to cut thin bridges;
3. lung seeds: erode the dark regions until the lungs part from the neck, the shoulders and the air
   outside the body (the smallest erosion that gives a clean pair wins); keep one seed per side of the
   film, the largest one that does not run along the film border nor sit at its outer edges or top.
   When a side has no seed (a lung merged with the air outside the body across a thin chest wall),
   the near-black regions along the film border are taken out and the search is repeated;
4. lung outline: marker-based watershed on the edge strength of the film, growing the seeds against
   a background marker (everything far from the seeds, the rejected dark regions, the film's top and
   side edges); the outline then follows the rib cage, heart and diaphragm edges;
5. clean-up: fill holes, keep the two lungs. The mask stays at the working size (``segment_working``): the
   crop step checks it and finds the lung box there, mapped exactly onto the film, and enlarges the mask to
   the film's size (nearest neighbour) only for its result; calling the segmenter returns that enlarged mask.

When the result is not a plausible pair of lungs (crop step's checks), the search runs once more with
bright structures smaller than ``bright_blob_radius`` removed by a grey-level opening first: profuse
nodular opacities fill diseased lungs with bright islands that break them apart. Films where the first
pass works are left exactly as they were (the opening costs a little accuracy on ordinary films).

Sizes are fractions of the working image's width, so results do not depend on the film's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, sparse
from skimage import exposure, filters, segmentation

from pneumollm.data.lungs.components import (
    dilate_disk,
    erode_disk,
    fill_holes,
    keep_largest_components,
    open_disk,
)
from pneumollm.data.lungs.crop import WorkingMask, implausibility

BACKGROUND_EDGES = ("top", "sides", "bottom")


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Indices reflected into ``[0, size)`` about the edge pixels' centres (``d c b | a b c d | c b a``)."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * size - 2
    index = np.abs(index) % period
    return np.where(index >= size, period - index, index)


def resize_weights(size: int, new_size: int) -> sparse.csr_matrix:
    """The ``(new_size, size)`` matrix of ``skimage.transform.resize`` along one axis (anti-aliased, linear).

    A Gaussian blur of sigma ``(f - 1) / 2`` for a shrink factor ``f = size / new_size > 1`` (scipy's kernel,
    truncated at 4 sigma), then linear interpolation at the new pixel centres, both mirroring the axis at
    its ends (skimage's default ``mode="reflect"``). Only the blurred values the interpolation reads are
    computed: about 30 weights per new pixel instead of a blur of the whole film.
    """
    factor = size / new_size
    sigma = max(0.0, (factor - 1) / 2)
    radius = int(4.0 * sigma + 0.5) if sigma > 1e-15 else 0
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / (sigma * sigma) * taps**2) if radius else np.ones(1)
    kernel = kernel / kernel.sum()
    coords = (np.arange(new_size) + 0.5) * factor - 0.5
    below = np.floor(coords)
    frac = coords - below
    centres = np.stack([below, below + 1], axis=1).astype(np.intp)  # (new_size, 2): the pixels interpolated
    columns = _mirror(centres[:, :, None] + taps, size).reshape(new_size, -1)
    weights = (np.stack([1 - frac, frac], axis=1)[:, :, None] * kernel).reshape(new_size, -1)
    rows = np.repeat(np.arange(new_size), columns.shape[1])
    return sparse.csr_matrix((weights.ravel(), (rows, columns.ravel())), shape=(new_size, size))


def shrink_film(film: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``skimage.transform.resize(film / 255, shape, anti_aliasing=True)`` (float32) as two sparse products.

    Equal to skimage's result within float32 rounding (one unit in the last place; skimage keeps its
    intermediate blur in float32), about ten times faster on a full-size film. Films smaller than ``shape``
    are enlarged without blur, as skimage does.
    """
    image = film.astype(np.float32) / np.float32(255.0)
    rows, cols = (resize_weights(size, new_size) for size, new_size in zip(film.shape, shape))
    small = (cols @ (rows @ image).T).T.astype(np.float32)
    # skimage clips to the input's range (a sum of weights may round past it)
    return np.clip(small, np.float32(film.min()) / np.float32(255.0), np.float32(film.max()) / np.float32(255.0))


def normalise_contrast(film: np.ndarray, working_size: int, clahe_clip: float) -> tuple[np.ndarray, np.ndarray]:
    """The film shrunk to ``working_size`` (long side) and percentile-stretched: (plain, CLAHE), in [0, 1]."""
    height, width = film.shape
    scale = working_size / max(height, width)
    shape = (max(16, round(height * scale)), max(16, round(width * scale)))
    small = shrink_film(film, shape)
    low, high = np.percentile(small, [1, 99])
    plain = np.clip((small - low) / max(high - low, 1e-6), 0.0, 1.0)
    equalised = exposure.equalize_adapthist(plain, clip_limit=clahe_clip) if clahe_clip > 0 else plain
    return plain, equalised


def central_window(image: np.ndarray, fraction: float) -> np.ndarray:
    """The centred sub-image covering ``fraction`` of each side."""
    height, width = image.shape
    dy, dx = int(height * (1 - fraction) / 2), int(width * (1 - fraction) / 2)
    return image[dy : height - dy, dx : width - dx]


class ThresholdSegmenter:
    """Classical lung segmentation: CLAHE, Otsu, seed selection and a marker-based watershed.

    Length parameters are fractions of the working image's width. ``last_failure`` says why the last
    call returned None.
    """

    name = "threshold"

    def __init__(
        self,
        working_size: int = 256,
        clahe_clip: float = 0.01,
        central_fraction: float = 0.6,
        dark_sigma: float = 0.0125,
        air_level: float = 0.3,
        opening: float = 0.02,
        separation: Sequence[float] = (0.02, 0.03, 0.04, 0.05),
        grow: float = 0.08,
        edge_sigma: float = 1.0,
        side_margin: float = 0.15,
        top_margin: float = 0.15,
        max_border_contact: float = 0.35,
        min_seed_area: float = 0.005,
        background_edges: Sequence[str] = ("top", "sides"),
        bright_blob_radius: float = 0.02,
    ) -> None:
        if working_size < 64:
            raise ValueError(f"lungs.working_size must be at least 64 pixels, got {working_size}")
        if not 0.0 < central_fraction <= 1.0:
            raise ValueError(f"lungs.central_fraction must lie in (0, 1], got {central_fraction}")
        if not separation:
            raise ValueError("lungs.separation needs at least one erosion radius")
        unknown = set(background_edges) - set(BACKGROUND_EDGES)
        if unknown:
            raise ValueError(f"lungs.background_edges: unknown {sorted(unknown)}; choose from {BACKGROUND_EDGES}")
        self.working_size = working_size
        self.clahe_clip = clahe_clip
        self.central_fraction = central_fraction
        self.dark_sigma = dark_sigma
        self.air_level = air_level
        self.opening = opening
        self.separation = tuple(float(f) for f in separation)
        self.grow = grow
        self.edge_sigma = edge_sigma
        self.side_margin = side_margin
        self.top_margin = top_margin
        self.max_border_contact = max_border_contact
        self.min_seed_area = min_seed_area
        self.background_edges = tuple(background_edges)
        self.bright_blob_radius = bright_blob_radius
        self.last_failure = ""

    @staticmethod
    def _radius(fraction: float, width: int) -> int:
        return max(1, round(fraction * width))

    def outside_air(self, plain: np.ndarray) -> np.ndarray:
        """Near-black regions touching the film border: air around the body (or collimator shadow)."""
        if self.air_level <= 0:
            return np.zeros(plain.shape, dtype=bool)
        smooth = filters.gaussian(plain, 1.0)
        level = self.air_level * filters.threshold_otsu(central_window(smooth, self.central_fraction))
        labels, _ = ndimage.label(smooth < level)
        ring = np.concatenate([labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]])
        touching = np.unique(ring[ring > 0])
        return np.isin(labels, touching)

    def dark_regions(self, equalised: np.ndarray, outside: np.ndarray | None = None) -> np.ndarray:
        """Pixels of the smoothed film darker than the Otsu level of its central window, less ``outside``,
        with thin bridges opened."""
        width = equalised.shape[1]
        smooth = filters.gaussian(equalised, max(1.0, self.dark_sigma * width))
        level = filters.threshold_otsu(central_window(smooth, self.central_fraction))
        dark = smooth < level
        if outside is not None:
            dark &= ~outside
        return open_disk(dark, self._radius(self.opening, width))

    def select_seeds(self, seeds: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Label the seed regions and pick the best one on each side of the film's midline.

        A region is rejected when much of its outline lies on the film border, when its centre lies in
        the outer side bands or the top band of the film (shoulders, neck, air outside the body), or
        when it is tiny; of the rest, the largest region left and right of the midline is kept.
        """
        height, width = seeds.shape
        labels, count = ndimage.label(seeds, structure=np.ones((3, 3), dtype=bool))
        if count == 0:
            return labels, []
        index = np.arange(1, count + 1)
        area = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        outline = seeds & ~ndimage.binary_erosion(seeds, border_value=0)
        outline_length = np.bincount(labels[outline], minlength=count + 1)[1:]
        ring = np.zeros_like(seeds)
        ring[[0, -1], :] = ring[:, [0, -1]] = True
        border_length = np.bincount(labels[ring & seeds], minlength=count + 1)[1:]
        rows, cols = np.asarray(ndimage.center_of_mass(seeds, labels, index)).reshape(-1, 2).T
        plausible = (
            (border_length <= self.max_border_contact * np.maximum(outline_length, 1))
            & (cols >= self.side_margin * width)
            & (cols <= (1 - self.side_margin) * width)
            & (rows >= self.top_margin * height)
            & (area >= self.min_seed_area * height * width)
        )
        chosen = []
        for side in (cols < width / 2, cols >= width / 2):
            candidates = np.flatnonzero(plausible & side)
            if candidates.size:
                chosen.append(int(index[candidates[np.argmax(area[candidates])]]))
        return labels, chosen

    def find_seeds(self, dark: np.ndarray) -> tuple[np.ndarray, list[int], int]:
        """Erode the dark regions ever more until a clean lung seed is found on both sides of the film.

        Lungs are often joined to the neck, the shoulders or the air outside the body by bridges of
        various widths; the smallest erosion that parts them keeps the seeds largest. A pair of seeds
        is clean when neither touches the film's top or side edges (where those dark areas lie); when
        no erosion gives a clean pair, the first pair found is used. Returns (labels, chosen, radius).
        """
        width = dark.shape[1]
        found: list[tuple[np.ndarray, list[int], int]] = []
        for fraction in self.separation:
            radius = self._radius(fraction, width)
            # Regions that run along the film border must still touch it after the erosion.
            seeds = erode_disk(dark, radius, outside_is_mask=True)
            labels, chosen = self.select_seeds(seeds)
            if len(chosen) == 2 and not self._touches_edges(labels, chosen):
                return labels, chosen, radius
            found.append((labels, chosen, radius))
        pairs = [item for item in found if len(item[1]) == 2]
        return pairs[0] if pairs else max(found, key=lambda item: len(item[1]))

    @staticmethod
    def _touches_edges(labels: np.ndarray, chosen: list[int]) -> bool:
        edges = np.concatenate([labels[0, :], labels[:, 0], labels[:, -1]])
        return bool(np.isin(edges, chosen).any())

    def _trim_edge_bands(self, markers: np.ndarray) -> np.ndarray:
        """Cut seeds that still run into the film's top or side edges back to the inner film; in place.

        Such a seed holds neck or shoulder as well as lung; the part cut off (the top band, or the outer
        side band, where the seed touches that edge) is returned to serve as background, and the
        watershed then puts the lung's outline on the strongest edge in between.
        """
        height, width = markers.shape
        top = round(self.top_margin * height)
        side = round(self.side_margin * width)
        trimmed = np.zeros(markers.shape, dtype=bool)
        for number in range(1, int(markers.max()) + 1):
            seed = markers == number
            cut = np.zeros_like(seed)
            if seed[0, :].any():
                cut[:top, :] = True
            if seed[:, 0].any():
                cut[:, :side] = True
            if seed[:, -1].any():
                cut[:, width - side :] = True
            cut &= seed
            if cut.any() and (seed & ~cut).any():
                trimmed |= cut
                markers[cut] = 0
        return trimmed

    def _edge_band(self, shape: tuple[int, int]) -> np.ndarray:
        band = np.zeros(shape, dtype=bool)
        if "top" in self.background_edges:
            band[0, :] = True
        if "sides" in self.background_edges:
            band[:, [0, -1]] = True
        if "bottom" in self.background_edges:
            band[-1, :] = True
        return band

    def suppress_bright_blobs(self, image: np.ndarray) -> np.ndarray:
        """Grey-level opening with a disk: bright spots smaller than it (nodules) take their surroundings' level."""
        if self.bright_blob_radius <= 0:
            return image
        radius = self._radius(self.bright_blob_radius, image.shape[1])
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        return ndimage.grey_opening(image, footprint=(yy**2 + xx**2) <= radius**2)

    def segment_small(self, plain: np.ndarray, equalised: np.ndarray, suppress_blobs: bool) -> np.ndarray | None:
        """The lung mask at working size (from ``normalise_contrast``'s two images), or None with
        ``last_failure`` set."""
        if suppress_blobs:
            equalised = self.suppress_bright_blobs(equalised)  # for finding the lungs; outlines follow the film
        width = plain.shape[1]
        labels, chosen, radius = self.find_seeds(self.dark_regions(equalised))
        if len(chosen) < 2 and self.air_level > 0:
            # A lung merged with the air outside the body across a thin chest wall: take the air out.
            retry = self.find_seeds(self.dark_regions(equalised, self.outside_air(plain)))
            if len(retry[1]) > len(chosen):
                labels, chosen, radius = retry
        if not chosen:
            self.last_failure = "threshold: no dark region plausible as a lung"
            return None
        markers = np.zeros(labels.shape, dtype=np.int32)
        for number, label in enumerate(chosen, start=1):
            markers[labels == label] = number
        trimmed = self._trim_edge_bands(markers)
        seeded = markers > 0
        reach = radius + self._radius(self.grow, width)
        background = ~dilate_disk(seeded, reach) | ((labels > 0) & ~seeded)
        # Neck, shoulders and air lie along the film's top and side edges; marking them background
        # stops the lungs from flooding into those dark areas through the apices.
        background |= self._edge_band(labels.shape) & ~seeded
        background |= trimmed
        markers[background] = len(chosen) + 1
        edges = filters.sobel(filters.gaussian(plain, self.edge_sigma))
        regions = segmentation.watershed(edges, markers)
        lungs = (regions >= 1) & (regions <= len(chosen))
        return fill_holes(keep_largest_components(lungs, 2))

    def __call__(self, image: np.ndarray, image_id: str) -> np.ndarray | None:
        working = self.segment_working(image, image_id)
        return None if working is None else working.full()

    def segment_working(self, image: np.ndarray, image_id: str) -> WorkingMask | None:
        """The lung mask at the working size (the crop step finds the box there), or None with ``last_failure``."""
        if image.ndim != 2:
            raise ValueError(f"{image_id}: lungs=threshold expects a 2-D greyscale film, got shape {image.shape}")
        if int(image.max()) == int(image.min()):
            self.last_failure = "threshold: the film is uniform (no contrast)"
            return None
        contrast = normalise_contrast(image, self.working_size, self.clahe_clip)  # shared by both passes
        small = self.segment_small(*contrast, suppress_blobs=False)
        if (small is None or implausibility(small)) and self.bright_blob_radius > 0:
            retry = self.segment_small(*contrast, suppress_blobs=True)
            if retry is not None and (small is None or not implausibility(retry)):
                small = retry
        if small is None:
            return None
        self.last_failure = ""
        return WorkingMask(small, image.shape)
