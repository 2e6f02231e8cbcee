"""The synthetic demo cohort: determinism, idempotence, DICOM realism, faults and a measurable signal."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from scipy import ndimage

from pneumollm.data.synthetic import (
    CR_SOP_CLASS,
    DX_SOP_CLASS,
    NEGATIVE_LABEL,
    POSITIVE_LABEL,
    STAMP_NAME,
    demo_mask_path,
    generate_demo_cohort,
)

SMALL = {"n_patients": 12, "seed": 3, "image_size": 256, "progress": False}


def read_labels(labels_csv: Path) -> list[dict[str, str]]:
    with open(labels_csv, newline="") as handle:
        return list(csv.DictReader(handle))


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def windowed(ds: pydicom.Dataset) -> np.ndarray:
    """The display image in [0, 1] with air dark: modality LUT, VOI (min/max without one), MONOCHROME1 inverted."""
    image = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    image = (image - image.min()) / max(image.max() - image.min(), 1e-9)
    return 1.0 - image if ds.PhotometricInterpretation == "MONOCHROME1" else image


def try_read(path: Path) -> pydicom.Dataset | None:
    try:
        ds = pydicom.dcmread(path)
        _ = ds.pixel_array
    except Exception:
        return None
    return ds


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    return generate_demo_cohort(tmp_path_factory.mktemp("small") / "demo", **SMALL)


@pytest.fixture(scope="module")
def small_films(small_cohort: Path) -> list[tuple[dict[str, str], pydicom.Dataset | None, np.ndarray]]:
    """(labels row, dataset or None when unreadable, ground-truth lung mask) of every film."""
    rows = read_labels(small_cohort)
    return [
        (
            row,
            try_read(small_cohort.parent / row["file"]),
            np.array(Image.open(demo_mask_path(small_cohort, row["file"]))),
        )
        for row in rows
    ]


def test_same_arguments_give_identical_bytes_and_another_seed_differs(tmp_path, small_cohort):
    again = generate_demo_cohort(tmp_path / "again", **SMALL)
    first, second = all_files(small_cohort.parent), all_files(again.parent)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []

    other = generate_demo_cohort(tmp_path / "other", **{**SMALL, "seed": 4})
    third = all_files(other.parent)
    common = [name for name in first if name.endswith(".dcm") and name in third]
    assert common and all(first[name] != third[name] for name in common)


def test_second_call_writes_nothing_and_new_arguments_regenerate(tmp_path):
    out = tmp_path / "demo"
    labels = generate_demo_cohort(out, n_patients=4, seed=1, image_size=64, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert generate_demo_cohort(out, n_patients=4, seed=1, image_size=64, progress=False) == labels
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    assert json.loads((out / STAMP_NAME).read_text())["seed"] == 1

    generate_demo_cohort(out, n_patients=4, seed=2, image_size=64, progress=False)
    assert json.loads((out / STAMP_NAME).read_text())["seed"] == 2
    assert not list(out.rglob(".*.tmp"))
    listed = {row["file"] for row in read_labels(labels)}
    assert listed == {p.relative_to(out).as_posix() for p in (out / "dicom").rglob("*.dcm")}


def test_regeneration_refuses_to_delete_foreign_files(tmp_path):
    out = tmp_path / "demo"
    generate_demo_cohort(out, n_patients=4, seed=1, image_size=64, progress=False)
    (out / "dicom" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        generate_demo_cohort(out, n_patients=4, seed=2, image_size=64, progress=False)


@pytest.mark.parametrize(
    "bad", [{"n_patients": 1}, {"positive_fraction": 1.0}, {"positive_fraction": 0.0}, {"image_size": 32}]
)
def test_bad_arguments_are_refused(tmp_path, bad):
    with pytest.raises(ValueError):
        generate_demo_cohort(tmp_path / "demo", **{**SMALL, **bad})


def test_default_cohort_size_and_class_ratio(tmp_path):
    rows = read_labels(generate_demo_cohort(tmp_path / "demo", image_size=64, progress=False))
    assert list(rows[0]) == ["file", "label", "patient_id", "stage"]
    patients: dict[str, set[str]] = {}
    for row in rows:
        assert row["file"] == f"dicom/{row['patient_id']}/{Path(row['file']).name}"
        patients.setdefault(row["patient_id"], set()).add(row["label"])
    assert len(patients) == 80
    assert 110 <= len(rows) <= 130
    assert all(len(labels) == 1 for labels in patients.values())
    positive_patients = sum(POSITIVE_LABEL in labels for labels in patients.values())
    assert positive_patients == 50
    film_ratio = sum(row["label"] == POSITIVE_LABEL for row in rows) / len(rows)
    assert 0.58 <= film_ratio <= 0.68
    films_per_patient = np.bincount([sum(r["patient_id"] == p for r in rows) for p in patients])
    assert films_per_patient[1] > films_per_patient[2] > films_per_patient[3] > 0
    assert {row["label"] for row in rows} == {POSITIVE_LABEL, NEGATIVE_LABEL}


def test_films_are_realistic_dicom(small_films):
    readable = [(row, ds, mask) for row, ds, mask in small_films if ds is not None]
    assert len(readable) == len(small_films) - 1
    modalities, photometric, bits, syntaxes = set(), set(), set(), []
    for row, ds, mask in readable:
        assert ds.SOPClassUID == {"CR": CR_SOP_CLASS, "DX": DX_SOP_CLASS}[ds.Modality]
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PatientID == row["patient_id"] and str(ds.PatientName).startswith("DEMO")
        assert ds.PatientSex in ("M", "F") and ds.PatientAge.endswith("Y")
        assert ds.ViewPosition == "PA" and ds.BodyPartExamined == "CHEST"
        assert ds.StudyInstanceUID != ds.SeriesInstanceUID != ds.SOPInstanceUID
        assert len(ds.StudyDate) == 8
        assert ds.BitsAllocated == 16 and 12 <= ds.BitsStored <= 15 and ds.HighBit == ds.BitsStored - 1
        assert ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns) == mask.shape
        assert ds.Rows == 256 and 0.8 * 256 <= ds.Columns <= 256
        assert int(ds.pixel_array.max()) < 2**ds.BitsStored
        assert 1.2 < float(ds.PixelSpacing[0]) < 1.6  # about 0.7 mm at 512 px
        if ds.Modality == "CR":
            assert "ImagerPixelSpacing" in ds
        modalities.add(ds.Modality)
        photometric.add(ds.PhotometricInterpretation)
        bits.add(ds.BitsStored)
        syntaxes.append(ds.file_meta.TransferSyntaxUID)
    assert modalities == {"CR", "DX"}
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert len(bits) >= 2
    assert syntaxes.count(ExplicitVRLittleEndian) > len(syntaxes) / 2


def test_masks_are_two_lungs_in_pixel_geometry(small_films):
    for _, _, mask in small_films:
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
        _, count = ndimage.label(mask > 0)
        assert count == 2
        assert 0.1 < (mask > 0).mean() < 0.5


def lung_and_mediastinum(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean of the lungs and of the non-lung strip between them (the mediastinum)."""
    lungs = mask > 0
    rows = np.flatnonzero(lungs.any(axis=1))
    cols = np.flatnonzero(lungs.any(axis=0))
    centre = (cols[0] + cols[-1]) // 2
    strip = np.zeros_like(lungs)
    strip[rows[0] : (rows[0] + rows[-1]) // 2, centre - 3 : centre + 4] = True
    return float(image[lungs].mean()), float(image[strip & ~lungs].mean())


def test_monochrome1_films_are_inverted_and_show_dark_lungs(small_films):
    checked = 0
    for _, ds, mask in small_films:
        if ds is None or ds.PhotometricInterpretation != "MONOCHROME1":
            continue
        raw_lungs, raw_mediastinum = lung_and_mediastinum(ds.pixel_array.astype(float), mask)
        assert raw_lungs > raw_mediastinum  # stored inverted: air is bright in MONOCHROME1
        lungs, mediastinum = lung_and_mediastinum(windowed(ds), mask)
        assert lungs + 0.2 < mediastinum
        checked += 1
    assert checked >= 1


def test_every_readable_film_shows_dark_lungs_and_a_visible_window(small_films):
    for row, ds, mask in small_films:
        if ds is None:
            continue
        image = windowed(ds)
        lungs, mediastinum = lung_and_mediastinum(image, mask)
        assert lungs + 0.2 < mediastinum, row["file"]
        assert 0.05 < lungs < 0.6, row["file"]  # the window shows the lungs: neither clipped black nor washed out


def blob_density(image: np.ndarray, mask: np.ndarray, third: int = 0) -> float:
    """Small bright blobs (difference-of-Gaussians peaks) per 1000 lung pixels in one third of the lungs' height."""
    lungs = ndimage.binary_erosion(mask > 0, iterations=3)
    rows = np.flatnonzero(lungs.any(axis=1))
    height = (rows[-1] - rows[0]) / 3
    region = np.zeros_like(lungs)
    region[int(rows[0] + third * height) : int(rows[0] + (third + 1) * height)] = True
    region &= lungs
    scale = image.shape[0] / 256
    dog = ndimage.gaussian_filter(image, scale) - ndimage.gaussian_filter(image, 3 * scale)
    peaks = (dog == ndimage.maximum_filter(dog, int(5 * scale))) & (dog > 0.03) & region
    return 1000 * peaks.sum() / region.sum()


def test_positives_have_more_small_bright_blobs_in_the_upper_zones(small_films):
    upper = {POSITIVE_LABEL: [], NEGATIVE_LABEL: []}
    lower_positive = []
    for row, ds, mask in small_films:
        if ds is None:
            continue
        image = windowed(ds)
        upper[row["label"]].append(blob_density(image, mask, third=0))
        if row["label"] == POSITIVE_LABEL:
            lower_positive.append(blob_density(image, mask, third=2))
    positives, negatives = np.array(upper[POSITIVE_LABEL]), np.array(upper[NEGATIVE_LABEL])
    assert np.median(positives) > 1.15 * np.median(negatives)
    assert (positives[:, None] > negatives[None, :]).mean() > 0.75  # the statistic's AUC
    assert np.mean(positives) > np.mean(lower_positive)  # upper zones first


def test_faulty_films_are_as_specified(small_cohort, small_films):
    without_window, with_voi_lut, jpeg2000, unreadable = [], [], [], []
    for row, ds, _ in small_films:
        if ds is None:
            unreadable.append(row["file"])
            continue
        has_window = "WindowCenter" in ds and "WindowWidth" in ds
        if "VOILUTSequence" in ds:
            assert not has_window
            with_voi_lut.append(ds)
        elif not has_window:
            without_window.append(ds)
        if ds.file_meta.TransferSyntaxUID == JPEG2000Lossless:
            jpeg2000.append(ds)
    assert (len(without_window), len(with_voi_lut), len(jpeg2000), len(unreadable)) == (1, 1, 2, 1)
    voi = with_voi_lut[0]
    assert int(apply_voi_lut(voi.pixel_array, voi).max()) > 60000  # the LUT spans the 16-bit display range
    for ds in jpeg2000:
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns) and ds.pixel_array.std() > 0
    with pytest.raises(ValueError):
        _ = pydicom.dcmread(small_cohort.parent / unreadable[0]).pixel_array


def test_without_faults_every_film_reads_and_has_a_window(tmp_path):
    labels = generate_demo_cohort(tmp_path / "demo", **{**SMALL, "include_faulty": False, "image_size": 64})
    for row in read_labels(labels):
        ds = pydicom.dcmread(labels.parent / row["file"])
        assert ds.file_meta.TransferSyntaxUID != JPEG2000Lossless
        assert "WindowCenter" in ds and ds.pixel_array.shape == (ds.Rows, ds.Columns)


def test_follow_up_films_share_the_patient_but_not_the_exposure(small_films):
    by_patient: dict[str, list[pydicom.Dataset]] = {}
    for row, ds, _ in small_films:
        if ds is not None:
            by_patient.setdefault(row["patient_id"], []).append(ds)
    followed = [films for films in by_patient.values() if len(films) > 1]
    assert followed
    for films in followed:
        assert len({(f.PatientID, f.PatientSex, str(f.PatientName)) for f in films}) == 1
        assert len({f.StudyInstanceUID for f in films}) == len(films)
        assert len({f.StudyDate for f in films}) == len(films)
        assert len({f.pixel_array.tobytes() for f in films}) == len(films)


def test_mask_path_of_a_non_demo_file_is_refused(small_cohort):
    with pytest.raises(ValueError, match="not a film of the demo cohort"):
        demo_mask_path(small_cohort, "images/x.dcm")


def test_stages_are_the_ilo_categories_of_the_positives_and_profusion_rises_with_them(tmp_path):
    from pneumollm.data.synthetic import _make_anatomy, _plan_patients

    rows = read_labels(generate_demo_cohort(tmp_path / "demo", image_size=64, progress=False))
    stage_of = {r["patient_id"]: (r["label"], int(r["stage"])) for r in rows}
    assert all((label == POSITIVE_LABEL) == (stage >= 1) for label, stage in stage_of.values())
    per_stage = np.bincount([stage for _, stage in stage_of.values()], minlength=4)
    assert per_stage.tolist()[0] == 30 and (per_stage[1:] >= 5).all()  # every stage fills five folds
    opacities: dict[int, list[int]] = {1: [], 2: [], 3: []}
    for patient in _plan_patients(80, 0, 0.63):
        if patient.positive:
            opacities[patient.category].append(len(_make_anatomy(0, patient).opacities))
    means = [np.mean(opacities[c]) for c in (1, 2, 3)]
    assert means[0] < means[1] < means[2], means  # more opacities at each higher category
