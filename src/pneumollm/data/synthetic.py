"""The embedded demo cohort: synthetic 16-bit DICOM chest films with a learnable pneumoconiosis signal.

Everything is drawn from a seed with numpy/scipy, so ``make demo`` needs no download. The films are
rendered in a patient-fixed "canonical" frame (v runs 0..1 from the top of the film, u is the horizontal
coordinate in the same units, the midline at u = 0.5, the patient's right on the image's left) and then
placed on the detector with a per-film zoom, shift and rotation, so follow-up films of one patient share
anatomy and opacities. See docs/demo_cohort.md for the design.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from pneumollm.utils.io import atomic_write_bytes, png_bytes

POSITIVE_LABEL = "pneumoconiosis"
NEGATIVE_LABEL = "normal"
STAMP_NAME = ".demo_cohort_complete.json"
GENERATOR_VERSION = 3  # 3: labels.csv gains the stage column

CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"

FAULTS = ("no_window", "voi_lut", "j2k", "j2k", "truncated")

_UID_ROOT = "pneumollm-demo-cohort"
_FIXED_BASE_DATE = np.datetime64("2021-03-01")
_OWNED_FILE = re.compile(r"^[A-Za-z0-9_-]+/\d+\.(dcm|png)$|(^|/)\.[^/]*\.tmp$")


# --------------------------------------------------------------------------------------------------------
# Cohort plan: patients, their anatomy and disease, and the films taken of them
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lung:
    """One lung field in the canonical frame; ``x`` is the distance from the midline, outward positive."""

    width: float  # lateral wall's distance from the midline at the base
    apex: float  # v of the apex
    apex_height: float  # vertical radius of the rounded top
    costophrenic: float  # v of the costophrenic angle (lowest lateral point)
    dome: float  # v of the top of the diaphragm dome
    medial: float  # mediastinal border's distance from the midline
    hilum_bulge: float  # how far the hilum pushes the medial border outward
    knob: float  # aortic knob bulge (left lung only)
    heart_width: float  # the heart border's largest distance from the midline on this side
    heart_top: float  # v where the heart border leaves the mediastinum
    heart_peak: float  # v of the heart border's widest point
    wobble: tuple[float, float, float]  # amplitude, frequency, phase of the lateral wall's irregularity

    def heart_border(self, v: np.ndarray) -> np.ndarray:
        """Distance of the heart's border from the midline at height ``v`` (0 above the heart)."""
        rise = np.clip((v - self.heart_top) / (self.heart_peak - self.heart_top), 0.0, 1.0)
        fall = np.clip((v - self.heart_peak) / 0.2, 0.0, 1.0)
        return self.heart_width * np.sin(0.5 * math.pi * rise) ** 0.7 * (1.0 - 0.6 * fall**2)

    def contains(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Boolean lung membership of canonical points (the heart shadow excluded)."""
        s = np.clip((v - self.apex) / (self.costophrenic - self.apex), 0.0, 1.0)
        amp, freq, phase = self.wobble
        lateral = self.width * (0.86 + 0.14 * s) * (1.0 + amp * np.sin(freq * v + phase))
        medial = (
            self.medial
            + self.hilum_bulge * np.exp(-(((v - 0.44) / 0.06) ** 2))
            + self.knob * np.exp(-(((v - 0.29) / 0.035) ** 2))
        )
        medial = np.maximum(medial, self.heart_border(v))
        # rounded apex: the upper half of an ellipse spanning the lung's width
        centre = 0.5 * (self.medial + self.width * 0.86)
        half = 0.5 * (self.width * 0.86 - self.medial) + 0.01
        t = np.clip((x - centre) / half, -1.0, 1.0)
        top = self.apex + self.apex_height * (1.0 - np.sqrt(1.0 - t**2))
        # diaphragm: highest at ``peak``, falling steeply to the costophrenic angle, gently medially
        peak = self.medial + 0.45 * (self.width - self.medial)
        lateral_fall = (self.costophrenic - self.dome) * ((x - peak) / (self.width - peak)) ** 2
        medial_fall = 0.05 * ((peak - x) / max(peak, 1e-3)) ** 2
        bottom = self.dome + np.where(x > peak, lateral_fall, medial_fall)
        return (x >= medial) & (x <= lateral) & (v >= top) & (v <= bottom)

    def zone(self, v: np.ndarray) -> np.ndarray:
        """Relative height inside the lung: 0 at the apex, 1 at the costophrenic angle."""
        return np.clip((v - self.apex) / (self.costophrenic - self.apex), 0.0, 1.0)


@dataclass(frozen=True)
class Anatomy:
    """Everything about a patient that stays the same between their films (canonical frame)."""

    body_width: float  # half-width of the chest
    right: Lung  # image left
    left: Lung  # image right
    rib_first: float
    rib_spacing: float
    rib_curve: float
    clavicle_v: float
    vessels: np.ndarray  # points along the vessels, rows (u, v, width, strength), width in canonical units
    hila: np.ndarray  # rows (u, v): the right and left hilum
    dots: np.ndarray  # rows (u, v, radius_mm, contrast): end-on vessels and granulomas, both classes
    opacities: np.ndarray  # rows (u, v, radius_mm, contrast): the pneumoconiosis signal (positives only)
    pose: tuple[float, float, float, float]  # base rotation (rad), zoom, shift u, shift v


@dataclass(frozen=True)
class Patient:
    """A patient of the cohort."""

    index: int
    patient_id: str
    positive: bool
    category: int  # ILO profusion category 0 (normal) to 3
    sex: str
    age: int
    n_films: int


@dataclass(frozen=True)
class Film:
    """One film: the patient, its pose on the detector, its exposure and how it is encoded."""

    patient: Patient
    number: int  # 1-based film number within the patient
    rotation: float
    zoom: float
    shift: tuple[float, float]
    columns: int
    pixel_spacing: float
    offset: float  # detector value of zero attenuation, as a fraction of the stored range
    span: float  # detector value range, as a fraction of the stored range
    gamma: float
    noise: float
    modality: str  # "CR" or "DX"
    bits_stored: int
    monochrome1: bool
    rescale: tuple[float, float] | None  # slope, intercept
    implicit_vr: bool
    fault: str | None
    days_from_first: int

    @property
    def relpath(self) -> str:
        return f"dicom/{self.patient.patient_id}/{self.number}.dcm"

    @property
    def mask_relpath(self) -> str:
        return f"masks/{self.patient.patient_id}/{self.number}.png"


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _plan_patients(n_patients: int, seed: int, positive_fraction: float) -> list[Patient]:
    rng = _rng(seed, 1)
    n_pos = min(max(round(positive_fraction * n_patients), 1), n_patients - 1)
    positive = np.zeros(n_patients, dtype=bool)
    positive[rng.permutation(n_patients)[:n_pos]] = True
    # Stratified follow-ups keep the film-level ratio close to the patient-level one: 30% two, 10% three.
    n_films = np.ones(n_patients, dtype=int)
    for cls in (True, False):
        members = rng.permutation(np.flatnonzero(positive == cls))
        n3, n2 = round(0.10 * members.size), round(0.30 * members.size)
        n_films[members[:n3]] = 3
        n_films[members[n3 : n3 + n2]] = 2
    patients = []
    for i in range(n_patients):
        category = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25])) if positive[i] else 0
        male = rng.random() < (0.88 if positive[i] else 0.6)
        age = int(rng.integers(42, 72) if positive[i] else rng.integers(30, 70))
        patients.append(
            Patient(i, f"P{i + 1:04d}", bool(positive[i]), category, "M" if male else "F", age, int(n_films[i]))
        )
    return patients


def _plan_films(patients: list[Patient], seed: int, image_size: int, include_faulty: bool) -> list[Film]:
    rng = _rng(seed, 2)
    films: list[Film] = []
    for patient in patients:
        days = 0
        for number in range(1, patient.n_films + 1):
            if number > 1:
                days += int(rng.integers(90, 420))
            square = rng.random() < 0.7
            columns = image_size if square else int(round(image_size * rng.uniform(0.86, 0.95) / 2) * 2)
            rescale = None
            if rng.random() < 0.3:
                rescale = (float(rng.choice([0.5, 1.0, 2.0])), float(rng.choice([-1024.0, 0.0, 100.0])))
            films.append(
                Film(
                    patient=patient,
                    number=number,
                    rotation=math.radians(rng.uniform(-2.0, 2.0)),
                    zoom=rng.uniform(0.97, 1.03),
                    shift=(rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)),
                    columns=columns,
                    pixel_spacing=round(0.7 * 512 / image_size * rng.uniform(0.95, 1.05), 4),
                    offset=rng.uniform(0.03, 0.15),
                    span=rng.uniform(0.5, 0.8),
                    gamma=rng.uniform(0.85, 1.2),
                    noise=rng.uniform(0.006, 0.013),
                    modality="CR" if rng.random() < 0.5 else "DX",
                    bits_stored=int(rng.choice([12, 12, 14, 15, 13])),
                    monochrome1=bool(rng.random() < 0.25),
                    rescale=rescale,
                    implicit_vr=bool(rng.random() < 0.1),
                    fault=None,
                    days_from_first=days,
                )
            )
    if include_faulty:
        if len(films) < len(FAULTS):
            raise ValueError(f"include_faulty needs at least {len(FAULTS)} films, the plan has {len(films)}")
        chosen = rng.choice(len(films), size=len(FAULTS), replace=False)
        for index, fault in zip(chosen, FAULTS):
            film = films[index]
            changes: dict[str, object] = {"fault": fault}
            if fault == "voi_lut":
                changes["rescale"] = None  # the LUT's input is then the stored value itself
            if fault in ("voi_lut", "j2k"):
                changes["implicit_vr"] = False
            films[index] = replace(film, **changes)
    return films


def _random_lung(rng: np.random.Generator, right: bool, body_width: float) -> Lung:
    width = body_width * rng.uniform(0.82, 0.88) * (1.02 if right else 1.0)
    apex = rng.uniform(0.11, 0.15)
    costophrenic = rng.uniform(0.76, 0.82) + (0.0 if right else 0.015)
    dome = rng.uniform(0.62, 0.68) + (0.0 if right else rng.uniform(0.015, 0.035))
    return Lung(
        width=width,
        apex=apex,
        apex_height=rng.uniform(0.14, 0.2),
        costophrenic=costophrenic,
        dome=dome,
        medial=rng.uniform(0.045, 0.06) if right else rng.uniform(0.05, 0.065),
        hilum_bulge=rng.uniform(0.0, 0.02),
        knob=0.0 if right else rng.uniform(0.015, 0.035),
        heart_width=rng.uniform(0.07, 0.095) if right else rng.uniform(0.16, 0.2),
        heart_top=rng.uniform(0.47, 0.52) if right else rng.uniform(0.39, 0.43),
        heart_peak=rng.uniform(0.6, 0.65),
        wobble=(rng.uniform(0.0, 0.025), rng.uniform(6.0, 14.0), rng.uniform(0.0, 2 * math.pi)),
    )


def _lung_fields(anatomy: Anatomy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of both lung fields, the heart shadow removed."""
    return anatomy.right.contains(0.5 - u, v) | anatomy.left.contains(u - 0.5, v)


def _vessel_tree(rng: np.random.Generator, lung: Lung, side: float) -> tuple[np.ndarray, np.ndarray]:
    """The hilum and points along vessels branching out of it, rows (u, v, width, strength).

    Hand-written (no library draws vessel trees): seven trunks fan out from the hilum, upward for the upper
    lobes, outward and downward for the lower; every branch splits in two, four times, each generation
    shorter, thinner and fainter. All branches of a generation are grown at once.
    """
    hilum = np.array([0.5 + side * (lung.medial + 0.03), 0.43 + rng.uniform(-0.02, 0.02)])
    count = 7
    angle = np.linspace(-1.75, 1.45, count) + rng.uniform(-0.12, 0.12, count)
    start = hilum + np.column_stack(
        [side * rng.uniform(-0.005, 0.015, count), 0.05 * angle / 1.75 + rng.normal(0.0, 0.01, count)]
    )
    length = rng.uniform(0.05, 0.08, count)
    width = rng.uniform(0.011, 0.015, count)
    generations = []
    for depth in range(5):
        steps = max(round(float(length.mean()) / 0.004), 3)
        turns = angle[:, None] + np.cumsum(
            rng.normal(0.0, 0.25, (count, 1)) / steps + rng.normal(0.0, 0.03, (count, steps)), axis=1
        )
        spacing = length / steps
        moves = spacing[:, None, None] * np.stack([side * np.cos(turns), np.sin(turns)], axis=-1)
        points = np.concatenate([start[:, None], start[:, None] + np.cumsum(moves, axis=1)], axis=1)
        widths = width[:, None] * np.linspace(1.0, 0.75, steps + 1)[None, :]
        # strength per point scales with the spacing so that a line's brightness does not depend on it
        strength = np.broadcast_to((0.8**depth * spacing / 0.004)[:, None], widths.shape)
        generations.append(np.column_stack([points.reshape(-1, 2), widths.ravel(), strength.ravel()]))
        start = np.repeat(points[:, -1], 2, axis=0)
        angle = np.repeat(turns[:, -1], 2) + np.tile([-1.0, 1.0], count) * rng.uniform(0.25, 0.55, 2 * count)
        length = np.repeat(length, 2) * rng.uniform(0.6, 0.8, 2 * count)
        width = np.repeat(width, 2) * 0.7
        count *= 2
    return hilum, np.concatenate(generations)


def _sample_in_lungs(
    rng: np.random.Generator, anatomy: Anatomy, count: int, zone_weights: tuple[float, float, float]
) -> np.ndarray:
    """``count`` canonical points inside the lung fields, drawn with per-zone (upper/middle/lower) weights."""
    cand = np.column_stack([rng.uniform(0.05, 0.95, 40 * count + 400), rng.uniform(0.08, 0.85, 40 * count + 400)])
    u, v = cand[:, 0], cand[:, 1]
    inside = _lung_fields(anatomy, u, v)
    cand = cand[inside]
    u, v = cand[:, 0], cand[:, 1]
    zone = np.where(u < 0.5, anatomy.right.zone(v), anatomy.left.zone(v))
    weights = np.asarray(zone_weights)[np.minimum((zone * 3).astype(int), 2)]
    picked = rng.choice(len(cand), size=min(count, len(cand)), replace=False, p=weights / weights.sum())
    return cand[picked]


def _make_anatomy(seed: int, patient: Patient, signal_strength: float = 1.0) -> Anatomy:
    rng = _rng(seed, 3, patient.index)
    body_width = rng.uniform(0.39, 0.44) * (0.97 if patient.sex == "F" else 1.0)
    right, left = _random_lung(rng, True, body_width), _random_lung(rng, False, body_width)
    (right_hilum, right_tree), (left_hilum, left_tree) = _vessel_tree(rng, right, -1.0), _vessel_tree(rng, left, 1.0)
    anatomy = Anatomy(
        body_width=body_width,
        right=right,
        left=left,
        rib_first=rng.uniform(0.1, 0.13),
        rib_spacing=rng.uniform(0.058, 0.066),
        rib_curve=rng.uniform(0.26, 0.32),
        clavicle_v=rng.uniform(0.14, 0.17),
        vessels=np.concatenate([right_tree, left_tree]),
        hila=np.array([right_hilum, left_hilum]),
        dots=np.zeros((0, 4)),
        opacities=np.zeros((0, 4)),
        pose=(math.radians(rng.uniform(-4.0, 4.0)), rng.uniform(0.93, 1.03), *rng.uniform(-0.03, 0.03, 2)),
    )
    # End-on vessels near the hila and a few granulomas, in both classes, so small dots alone do not decide.
    n_dots = int(rng.integers(4, 16))
    dots = _sample_in_lungs(rng, anatomy, n_dots, (0.6, 1.0, 0.7))
    dot_rows = np.column_stack([dots, rng.uniform(1.5, 3.0, len(dots)), rng.uniform(0.04, 0.09, len(dots))])
    opacity_rows = np.zeros((0, 4))
    if patient.positive:
        opacity_rows = _make_opacities(rng, anatomy, patient.category, signal_strength)
    return replace(anatomy, dots=dot_rows, opacities=opacity_rows)


def _make_opacities(rng: np.random.Generator, anatomy: Anatomy, category: int,
                    signal_strength: float = 1.0) -> np.ndarray:
    """Small rounded opacities (ILO p/q/r), upper zones first; a conglomerate mass in some category 3.

    ``signal_strength`` scales the opacities' contrast, and their radius by its square root up to the largest
    "r" size (1 = the default subtlety; larger values make the disease conspicuous enough for small randomly
    initialised models)."""
    count = int(rng.integers(*{1: (30, 70), 2: (90, 190), 3: (220, 450)}[category]))
    zones = {1: (1.0, 0.3, 0.06), 2: (1.0, 0.65, 0.2), 3: (1.0, 0.9, 0.5)}[category]
    kind = rng.choice(["p", "q", "r"], p=[0.25, 0.45, 0.3])
    low, high = {"p": (1.5, 2.5), "q": (2.5, 4.5), "r": (4.5, 9.0)}[kind]  # diameters in mm
    points = _sample_in_lungs(rng, anatomy, count, zones)
    # signal_strength > 1 enlarges the small opacities up to the largest "r" size and raises their contrast
    radius = np.minimum(rng.uniform(low, high, len(points)) / 2 * math.sqrt(signal_strength), 4.5)
    contrast = rng.uniform(0.035, 0.07, len(points)) * (1.0 + 0.15 * (category - 1)) * signal_strength
    rows = [np.column_stack([points, radius, contrast])]
    if category == 3 and rng.random() < 0.35:  # progressive massive fibrosis: a lumpy upper-zone mass
        for centre in _sample_in_lungs(rng, anatomy, int(rng.integers(1, 3)), (1.0, 0.15, 0.0)):
            lumps = centre + rng.normal(0.0, 0.012, (7, 2))
            rows.append(np.column_stack([lumps, rng.uniform(6.0, 11.0, 7), rng.uniform(0.03, 0.05, 7)]))
    return np.concatenate(rows)


# --------------------------------------------------------------------------------------------------------
# Rendering: attenuation image (bright = dense) of one film
# --------------------------------------------------------------------------------------------------------


def _pose(film: Film, anatomy: Anatomy) -> tuple[float, float, float, float]:
    rot0, zoom0, su0, sv0 = anatomy.pose
    return rot0 + film.rotation, zoom0 * film.zoom, su0 + film.shift[0], sv0 + film.shift[1]


def _canonical_grid(rows: int, cols: int, pose: tuple[float, float, float, float], step: int = 1):
    """Canonical (u, v) of the pixel centres of a ``rows`` x ``cols`` film, sampled every ``step`` pixels."""
    rotation, zoom, su, sv = pose
    ys = (np.arange(0, rows, step, dtype=np.float32) + (step - 1) / 2) - (rows / 2 + sv * rows)
    xs = (np.arange(0, cols, step, dtype=np.float32) + (step - 1) / 2) - (cols / 2 + su * rows)
    c, s, scale = math.cos(rotation), math.sin(rotation), rows * zoom
    py, px = ys[:, None], xs[None, :]
    u = 0.5 + (c * px + s * py) / scale
    v = 0.5 + (-s * px + c * py) / scale
    return u.astype(np.float32), v.astype(np.float32)


def _to_pixels(points: np.ndarray, rows: int, cols: int, pose: tuple[float, float, float, float]) -> np.ndarray:
    """Canonical (u, v) rows to pixel (row, col) rows."""
    rotation, zoom, su, sv = pose
    c, s, scale = math.cos(rotation), math.sin(rotation), rows * zoom
    du, dv = points[:, 0] - 0.5, points[:, 1] - 0.5
    col = scale * (c * du - s * dv) + cols / 2 + su * rows - 0.5
    row = scale * (s * du + c * dv) + rows / 2 + sv * rows - 0.5
    return np.column_stack([row, col])


def _band(distance: np.ndarray, half: float) -> np.ndarray:
    """A bone-like band profile: flat-topped with slightly brighter cortical edges."""
    q = (distance / half) ** 2
    return np.exp(-(q**3)) * (0.7 + 0.3 * q)


def _body_half_width(anatomy: Anatomy, v: np.ndarray) -> np.ndarray:
    bw = anatomy.body_width
    shoulder = np.clip((v - 0.03) / 0.14, 0.0, 1.0)
    waist = np.clip((v - 0.15) / 0.25, 0.0, 1.0)
    smooth = lambda t: t * t * (3.0 - 2.0 * t)
    width = 0.1 + (bw + 0.05 - 0.1) * smooth(shoulder) - 0.05 * smooth(waist) - 0.02 * np.clip(v - 0.4, 0.0, None)
    return width.astype(np.float32)


def _smooth_anatomy(anatomy: Anatomy, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft tissue, mediastinum, heart, hila and spine; and, separately, ribs and clavicles."""
    x = np.abs(u - 0.5)
    half_width = _body_half_width(anatomy, v)
    thickness = np.sqrt(np.clip(1.0 - (x / half_width) ** 2, 0.0, 1.0))
    body = 1.0 / (1.0 + np.exp((x - half_width) / 0.006))
    image = 0.42 * thickness**0.5 * body
    image += 0.08 * body * np.clip((v - 0.55) / 0.3, 0.0, 1.0)  # abdomen (liver) denser below
    image += 0.05 * body * np.exp(-(((v - 0.1) / 0.06) ** 2))  # shoulder girdle muscles
    heart_margin = np.minimum(anatomy.left.heart_border(v) - (u - 0.5), anatomy.right.heart_border(v) + (u - 0.5))
    image += 0.05 * np.clip(heart_margin / 0.03, 0.0, 1.0) * np.clip((anatomy.left.dome + 0.06 - v) / 0.04, 0.0, 1.0)
    image += 0.06 * np.exp(-((x / 0.075) ** 4)) * np.clip((v - 0.05) / 0.05, 0.0, 1.0)  # mediastinum
    for hu, hv in anatomy.hila:
        image += 0.07 * np.exp(-(((u - hu) / 0.035) ** 2 + ((v - hv) / 0.055) ** 2))
    # spine: vertebral bodies separated by darker discs
    vert = 0.75 + 0.25 * np.cos(2 * math.pi * (v - 0.05) / 0.048) ** 2
    image += 0.045 * np.exp(-((x / 0.028) ** 4)) * vert * (v > 0.02)
    trachea = np.exp(-((x / 0.012) ** 4)) * np.clip((0.37 - v) / 0.04, 0.0, 1.0) * np.clip(v / 0.04, 0.0, 1.0)
    image -= 0.07 * trachea
    # ribs and clavicles (hand-written bands: no library models a rib cage)
    cage = 1.0 / (1.0 + np.exp((x - half_width + 0.02) / 0.008))
    xr = x / anatomy.body_width
    bones = np.zeros_like(image)
    for k in range(10):
        v0 = anatomy.rib_first + k * anatomy.rib_spacing
        # posterior rib: from the spine up and out, then down along the lateral wall
        centre = v0 - 0.12 * xr + anatomy.rib_curve * xr**2
        bones += _band(v - centre, 0.009 + 0.0007 * k) * np.clip((x - 0.03) / 0.02, 0.0, 1.0)
        if k < 7:  # anterior rib: from the lateral wall down toward the sternum, fading into cartilage
            front = v0 - 0.12 + anatomy.rib_curve + 0.18 * np.clip(1.0 - xr, 0.0, None)
            bones += 0.45 * _band(v - front, 0.011) * np.clip((xr - 0.35) / 0.25, 0.0, 1.0)
    bones *= cage
    clavicle = anatomy.clavicle_v + 0.03 - 0.1 * xr + 0.03 * xr**2
    bones += 3.0 * _band(v - clavicle, 0.014) * np.clip((xr - 0.06) / 0.05, 0.0, 1.0) * (xr < 0.95) * body
    return image.astype(np.float32), bones.astype(np.float32)


def _splat_lines(
    points: np.ndarray,
    shape: tuple[int, int],
    pose,
    px_per_unit: float,
    widths: tuple[float, float],
    step: int = 1,
) -> np.ndarray:
    """Vessels with widths in ``widths`` (pixels): points along them, accumulated, then blurred."""
    rows, cols = shape
    width_px = points[:, 2] * px_per_unit
    sel = (width_px >= widths[0]) & (width_px < widths[1])
    impulses = np.zeros(shape, dtype=np.float32)
    if not sel.any():
        return impulses
    pix = _to_pixels(points[sel, :2], rows * step, cols * step, pose)
    pix = (pix + 0.5) / step - 0.5
    sigma = max(float(np.median(width_px[sel])) / 2.5 / step, 0.7)
    r = np.clip(np.round(pix[:, 0]).astype(int), 0, rows - 1)
    c = np.clip(np.round(pix[:, 1]).astype(int), 0, cols - 1)
    step_px = 0.004 * px_per_unit / step
    np.add.at(impulses, (r, c), points[sel, 3] * math.sqrt(2 * math.pi) * sigma / step_px)
    return ndimage.gaussian_filter(impulses, sigma, truncate=3.0)


def _stamp_blobs(image: np.ndarray, pixels: np.ndarray, radius_px: np.ndarray, contrast: np.ndarray) -> None:
    """Add soft-edged round opacities (rounded discs) in place."""
    rows, cols = image.shape
    for (r0, c0), radius, amp in zip(pixels, radius_px, contrast):
        reach = math.ceil(radius + 3)
        top, left = max(int(r0) - reach, 0), max(int(c0) - reach, 0)
        bottom, right = min(int(r0) + reach + 1, rows), min(int(c0) + reach + 1, cols)
        if top >= bottom or left >= right:
            continue
        yy, xx = np.ogrid[top:bottom, left:right]
        dist = np.sqrt((yy - r0) ** 2 + (xx - c0) ** 2)
        image[top:bottom, left:right] += amp / (1.0 + np.exp((dist - radius) / max(0.3 * radius, 0.5)))


def _without_specks(mask: np.ndarray) -> np.ndarray:
    """Drop the few-pixel islands left where a lung border grazes the diaphragm."""
    labels, count = ndimage.label(mask)
    if count <= 2:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.isin(labels, np.argsort(sizes)[-2:])


def _upsample2(layer: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Bilinear 2x upsampling with pixel-centre alignment (hand-written: 5x faster than ndimage.zoom)."""

    def along(a: np.ndarray, axis: int) -> np.ndarray:
        a = np.moveaxis(a, axis, 0)
        before = np.concatenate([a[:1], a[:-1]])
        after = np.concatenate([a[1:], a[-1:]])
        out = np.empty((2 * a.shape[0], *a.shape[1:]), dtype=a.dtype)
        out[0::2] = 0.75 * a + 0.25 * before
        out[1::2] = 0.75 * a + 0.25 * after
        return np.moveaxis(out, 0, axis)

    return along(along(layer, 0), 1)[:rows, :cols]


def _render_film(film: Film, anatomy: Anatomy, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation image (float32, bright = dense) and the boolean lung mask of ``film``."""
    cols = film.columns
    pose = _pose(film, anatomy)
    rng = _rng(seed, 4, film.patient.index, film.number)
    px_per_unit = rows * pose[1]
    u, v = _canonical_grid(rows, cols, pose)
    lungs = _without_specks(_lung_fields(anatomy, u, v))
    # Smooth structures at half resolution: what a pixel shows outside the lungs, and what the lungs add.
    hu, hv = _canonical_grid(rows, cols, pose, step=2)
    tissue, bones = _smooth_anatomy(anatomy, hu, hv)
    depth = ndimage.gaussian_filter(lungs[::2, ::2].astype(np.float32), rows / 60)  # thickest mid-field
    air = 0.14 + 0.1 * depth - 0.04 * np.clip((hv - 0.55) / 0.2, 0.0, 1.0)  # lighter bases: soft tissue
    a, b, c, d = rng.normal(0.0, 1.0, 4)
    su, sv = (hu - 0.5) * 2, (hv - 0.5) * 2
    tissue += 0.01 * (a * su + b * sv + c * su**2 + d * su * sv)  # uneven exposure
    # bones show less through the thick soft tissue than over the lungs
    outside = tissue + 0.025 * bones
    inside = 0.02 * bones - air
    inside += 0.07 * _splat_lines(anatomy.vessels, hu.shape, pose, px_per_unit, (3.0, 99.0), step=2)
    image = _upsample2(outside, rows, cols)
    lung_soft = ndimage.gaussian_filter(lungs.astype(np.float32), max(rows / 200, 0.8))
    detail = _upsample2(inside, rows, cols)
    detail += 0.08 * _splat_lines(anatomy.vessels, (rows, cols), pose, px_per_unit, (0.0, 3.0))
    blobs = np.concatenate([anatomy.dots, anatomy.opacities])
    if len(blobs):
        mm_per_px = film.pixel_spacing
        _stamp_blobs(detail, _to_pixels(blobs[:, :2], rows, cols, pose), blobs[:, 2] / mm_per_px, blobs[:, 3])
    image += detail * lung_soft
    noise = rng.standard_normal((rows, cols), dtype=np.float32)
    image += film.noise * (0.6 * noise + 0.8 * ndimage.uniform_filter(noise, 3))
    return np.clip(image, 0.0, None), lungs


# --------------------------------------------------------------------------------------------------------
# Encoding: detector values, DICOM datasets, faults
# --------------------------------------------------------------------------------------------------------


def _detector_values(film: Film, attenuation: np.ndarray) -> np.ndarray:
    """Stored pixel values (uint16, within BitsStored); inverted for MONOCHROME1."""
    top = 2**film.bits_stored - 1
    stored = (film.offset + film.span * np.power(attenuation, film.gamma)) * top
    stored = np.clip(np.round(stored), 0, top).astype(np.uint16)
    return (top - stored).astype(np.uint16) if film.monochrome1 else stored


def _default_window(film: Film, stored: np.ndarray, lungs: np.ndarray) -> tuple[float, float]:
    """Window (centre, width) in modality units covering the chest: the lung fields to the bright bones."""
    values = stored[::2, ::2].astype(np.float64)
    lung_values = stored[lungs][::7].astype(np.float64)
    if film.rescale:
        values = values * film.rescale[0] + film.rescale[1]
        lung_values = lung_values * film.rescale[0] + film.rescale[1]
    if film.monochrome1:  # dark lungs are the high stored values
        lo, hi = np.percentile(values, 0.5), np.percentile(lung_values, 99.5)
        hi += 0.05 * (hi - lo)
    else:
        lo, hi = np.percentile(lung_values, 0.5), np.percentile(values, 99.5)
        lo -= 0.05 * (hi - lo)
    return round((lo + hi) / 2, 1), round(max(hi - lo, 2.0), 1)


def _voi_lut_item(stored: np.ndarray, lungs: np.ndarray, film: Film):
    """A VOI LUT Sequence item: a smooth S-curve over the chest's stored-value range (16-bit output)."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

    lung_values = stored[lungs]
    if film.monochrome1:
        lo, hi = int(np.percentile(stored, 1.0)), int(np.percentile(lung_values, 99.8))
    else:
        lo, hi = int(np.percentile(lung_values, 0.2)), int(np.percentile(stored, 99.0))
    entries = max(hi - lo + 1, 2)
    t = np.linspace(-1.0, 1.0, entries)
    curve = 0.5 + 0.5 * np.tanh(1.6 * t) / math.tanh(1.6)
    lut = np.round(curve * 65535).astype("<u2")
    item = Dataset()
    item.add(DataElement(0x00283002, "US", [entries, lo, 16]))  # LUT Descriptor
    item.LUTExplanation = "SYNTHETIC CHEST"
    item.add(DataElement(0x00283006, "OW", lut.tobytes()))  # LUT Data
    return item


def _uid(seed: int, *parts: object) -> str:
    """A UUID-derived UID (2.25.<name-based UUID>), the same for the same seed and parts."""
    name = "/".join([_UID_ROOT, str(seed), *map(str, parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"


def _dataset(film: Film, seed: int, stored: np.ndarray, lungs: np.ndarray):
    """The DICOM dataset of ``film`` (file meta included), pixel data uncompressed."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    patient = film.patient
    sop_class = CR_SOP_CLASS if film.modality == "CR" else DX_SOP_CLASS
    sop_instance = _uid(seed, patient.patient_id, film.number, "image")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if film.implicit_vr else ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    date = str(_FIXED_BASE_DATE + np.timedelta64(patient.index * 7 + film.days_from_first, "D")).replace("-", "")
    time = f"{8 + (patient.index * 5 + film.number) % 9:02d}{(patient.index * 17) % 60:02d}00"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AccessionNumber = f"DEMO{patient.index + 1:04d}{film.number}"
    ds.Modality = film.modality
    ds.Manufacturer = "PneumoLLM synthetic"
    ds.InstitutionName = "Synthetic demo cohort"
    ds.StudyDescription = "CHEST PA"
    ds.PatientName = f"DEMO^{patient.patient_id}"
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{patient.age + film.days_from_first // 365:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyInstanceUID = _uid(seed, patient.patient_id, film.number, "study")
    ds.SeriesInstanceUID = _uid(seed, patient.patient_id, film.number, "series")
    ds.StudyID = f"{film.number}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]  # PA: rows run toward the patient's left, columns toward the feet
    if film.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    rows, cols = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if film.monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.PixelSpacing = [f"{film.pixel_spacing:.4f}", f"{film.pixel_spacing:.4f}"]
    if film.modality == "CR":
        ds.ImagerPixelSpacing = ds.PixelSpacing
    ds.BitsAllocated = 16
    ds.BitsStored = film.bits_stored
    ds.HighBit = film.bits_stored - 1
    ds.PixelRepresentation = 0
    if film.rescale:
        ds.RescaleSlope = f"{film.rescale[0]:g}"
        ds.RescaleIntercept = f"{film.rescale[1]:g}"
        ds.RescaleType = "US"
    if film.fault == "voi_lut":
        ds.VOILUTSequence = [_voi_lut_item(stored, lungs, film)]
    elif film.fault != "no_window":
        centre, width = _default_window(film, stored, lungs)
        ds.WindowCenter = f"{centre:g}"
        ds.WindowWidth = f"{width:g}"
        ds.VOILUTFunction = "LINEAR"
    ds.LossyImageCompression = "00"
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def _encode(film: Film, seed: int, stored: np.ndarray, lungs: np.ndarray) -> bytes:
    """The bytes of the DICOM file of ``film``, with its fault (if any) applied."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    ds = _dataset(film, seed, stored, lungs)
    if film.fault == "j2k":
        # lossless: the same image, so it keeps its SOP Instance UID
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    if film.fault == "truncated":  # an interrupted transfer: cut in the middle of the pixel data
        header = len(data) - stored.nbytes
        data = data[: header + int(stored.nbytes * 0.6)]
    return data



# --------------------------------------------------------------------------------------------------------
# Files: atomic writes, completion stamp, the public entry point
# --------------------------------------------------------------------------------------------------------


def _clear_previous(out_dir: Path) -> None:
    """Remove an earlier cohort's dicom/ and masks/ trees, refusing when they hold files we did not write."""
    for sub in ("dicom", "masks"):
        root = out_dir / sub
        if not root.exists():
            continue
        for path in root.rglob("*"):
            if path.is_file() and not _OWNED_FILE.search(path.relative_to(root).as_posix()):
                raise FileExistsError(f"{path}: not a file of the demo cohort; refusing to regenerate into {out_dir}")
        shutil.rmtree(root)


def demo_mask_path(labels_csv: str | Path, file: str) -> Path:
    """Ground-truth lung mask of the film ``file`` (a ``file`` entry of ``labels_csv``)."""
    relative = Path(file)
    if relative.parts[0] != "dicom":
        raise ValueError(f"{file}: not a film of the demo cohort (expected dicom/<patient_id>/<n>.dcm)")
    return Path(labels_csv).parent / "masks" / Path(*relative.parts[1:]).with_suffix(".png")


def generate_demo_cohort(
    out_dir: str | Path,
    n_patients: int = 80,
    seed: int = 0,
    image_size: int = 512,
    positive_fraction: float = 0.63,
    include_faulty: bool = True,
    progress: bool = True,
    signal_strength: float = 1.0,
) -> Path:
    """Write the synthetic demo cohort and return the path of its ``labels.csv``.

    Layout: ``out_dir/dicom/<patient_id>/<n>.dcm``, ``out_dir/masks/<patient_id>/<n>.png`` (lungs 255)
    and ``out_dir/labels.csv`` (columns ``file,label,patient_id,stage``; stage: the ILO profusion category 0-3,
    opacities more numerous and denser with it). Same arguments give byte-identical
    files; a second call with the same arguments finds the completion stamp and writes nothing.
    """
    if n_patients < 2:
        raise ValueError(f"n_patients must be at least 2 (one per class), got {n_patients}")
    if not 0.0 < positive_fraction < 1.0:
        raise ValueError(f"positive_fraction must lie strictly between 0 and 1, got {positive_fraction}")
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64 pixels, got {image_size}")
    out_dir = Path(out_dir)
    labels_csv = out_dir / "labels.csv"
    stamp = out_dir / STAMP_NAME
    arguments = {
        "generator_version": GENERATOR_VERSION,
        "n_patients": n_patients,
        "seed": seed,
        "image_size": image_size,
        "positive_fraction": positive_fraction,
        "include_faulty": include_faulty,
    }
    if signal_strength != 1.0:  # kept out of the stamp at the default, so existing cohorts stay valid
        arguments["signal_strength"] = signal_strength
    stamp_text = json.dumps(arguments, indent=2, sort_keys=True) + "\n"
    if stamp.is_file() and labels_csv.is_file() and stamp.read_text() == stamp_text:
        return labels_csv

    patients = _plan_patients(n_patients, seed, positive_fraction)
    films = _plan_films(patients, seed, image_size, include_faulty)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    _clear_previous(out_dir)

    from rich.progress import track

    anatomies: dict[int, Anatomy] = {}
    for film in track(films, description="Synthetic demo cohort", disable=not progress):
        index = film.patient.index
        if index not in anatomies:
            anatomies = {index: _make_anatomy(seed, film.patient, signal_strength)}
        attenuation, lungs = _render_film(film, anatomies[index], image_size, seed)
        stored = _detector_values(film, attenuation)
        atomic_write_bytes(out_dir / film.relpath, _encode(film, seed, stored, lungs))
        atomic_write_bytes(out_dir / film.mask_relpath, png_bytes(lungs.astype(np.uint8) * 255))

    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["file", "label", "patient_id", "stage"])
    for film in films:
        label = POSITIVE_LABEL if film.patient.positive else NEGATIVE_LABEL
        writer.writerow([film.relpath, label, film.patient.patient_id, film.patient.category])
    atomic_write_bytes(labels_csv, table.getvalue().encode())
    atomic_write_bytes(stamp, stamp_text.encode())
    return labels_csv
