"""DICOM decoding with pydicom's own LUT functions, on real films and on crafted edge cases."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pneumollm.data.dicom import UnreadableImageError, decode_dicom, read_header
from pneumollm.data.films import decode_film
from tests.helpers import pydicom_test_file


def _regions(film: np.ndarray) -> tuple[float, float]:
    """Mean of the spine column and of both lung fields (middle third of the film's height)."""
    h, w = film.shape
    band = film[h // 3: 2 * h // 3]
    spine = band[:, w // 2 - w // 20: w // 2 + w // 20].mean()
    lungs = np.concatenate([band[:, w // 5: w // 3].ravel(), band[:, 2 * w // 3: 4 * w // 5].ravel()]).mean()
    return float(spine), float(lungs)


def test_real_monochrome1_film_is_inverted_so_lungs_are_darker_than_the_spine() -> None:
    film = decode_dicom(pydicom_test_file("RG1_UNCI.dcm"))
    assert film.pixels.dtype == np.uint8 and film.pixels.shape == (1955, 1841)
    spine, lungs = _regions(film.pixels)
    assert lungs + 30 < spine, (lungs, spine)
    assert film.notes == []  # the file carries its window


def test_jpeg2000_lossless_decodes_to_the_same_film_as_the_uncompressed_one() -> None:
    plain = decode_dicom(pydicom_test_file("RG1_UNCI.dcm")).pixels
    j2k = decode_dicom(pydicom_test_file("RG1_J2KR.dcm")).pixels
    assert j2k.shape == plain.shape
    assert np.abs(j2k.astype(int) - plain.astype(int)).mean() < 1.0


def _write_film(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", window: tuple | None = (2048, 4096),
                modality: str = "DX", voi_lut: np.ndarray | None = None, with_pixels: bool = True, *,
                signed: bool = False, rescale: tuple[float, float] | None = None, voi_function: str | None = None,
                lut_bits: int = 16) -> Path:
    """A 12-bit single-frame film; ``signed`` stores two's-complement values, ``rescale`` is (slope, intercept)."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality, ds.StudyInstanceUID = "PX1", modality, generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = 16, 12, 11, 1
    ds.PixelRepresentation = int(signed)
    ds.PhotometricInterpretation = photometric
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function:
        ds.VOILUTFunction = voi_function
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut is not None:
        item = pydicom.Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, lut_bits]
        item.LUTData = voi_lut.astype("<u2").tobytes()
        ds.VOILUTSequence = [item]
    if with_pixels:
        ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp() -> np.ndarray:
    return np.tile(np.linspace(0, 4095, 64), (48, 1)).astype(np.uint16)


def test_window_maps_the_window_to_the_full_8bit_range(tmp_path: Path) -> None:
    film = decode_dicom(_write_film(tmp_path / "w.dcm", _ramp(), window=(2048, 1024))).pixels
    assert film[:, 0].max() == 0 and film[:, -1].min() == 255  # outside the window: clipped
    assert 0 < film[0, 32] < 255  # inside: graded


def test_missing_window_falls_back_to_min_max_and_says_so(tmp_path: Path) -> None:
    pixels = _ramp() // 4 + 100
    film = decode_dicom(_write_film(tmp_path / "nowin.dcm", pixels, window=None))
    assert film.pixels.min() == 0 and film.pixels.max() == 255
    assert any("min/max" in note for note in film.notes)


def test_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    lut = np.zeros(4096)
    lut[2048:] = 4095  # a step LUT with 12-bit entries: only two output levels
    film = decode_dicom(_write_film(tmp_path / "lut.dcm", _ramp(), window=None, voi_lut=lut, lut_bits=12)).pixels
    assert set(np.unique(film)) == {0, 255}


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    mono2 = decode_dicom(_write_film(tmp_path / "m2.dcm", _ramp())).pixels
    mono1 = decode_dicom(_write_film(tmp_path / "m1.dcm", _ramp(), photometric="MONOCHROME1")).pixels
    np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("truncated", "cannot be decoded"), ("no_pixels", "no pixel data"), ("rgb", "photometric"),
     ("ct", "not a radiograph"), ("garbage", "no pixel data|not a readable DICOM")],
)
def test_bad_files_raise_a_reason_naming_the_file(tmp_path: Path, kind: str, reason: str) -> None:
    path = tmp_path / f"{kind}.dcm"
    if kind == "truncated":
        _write_film(path, _ramp())
        path.write_bytes(path.read_bytes()[:-3000])
    elif kind == "no_pixels":
        _write_film(path, _ramp(), with_pixels=False)
    elif kind == "rgb":
        _write_film(path, _ramp(), photometric="RGB")
    elif kind == "ct":
        _write_film(path, _ramp(), modality="CT")
    else:
        path.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 50)
    with pytest.raises(UnreadableImageError) as info:
        decode_dicom(path)
    assert re.search(reason, info.value.reason)
    assert str(path) in str(info.value)


def test_header_is_read_without_pixels(tmp_path: Path) -> None:
    header = read_header(_write_film(tmp_path / "h.dcm", _ramp()))
    assert header.patient_id == "PX1" and header.modality == "DX" and header.sop_instance_uid


def test_raster_films_are_read_as_greyscale(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "f.png")
    film = decode_film(tmp_path / "f.png")
    assert film.pixels.shape == (20, 30) and film.pixels.dtype == np.uint8
    assert any("greyscale" in n for n in film.notes)
    with pytest.raises(UnreadableImageError, match="not found"):
        decode_film(tmp_path / "missing.png")


def test_jpeg_lossless_process_14_decodes_through_pylibjpeg() -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPEG-LL.dcm")  # ships with pydicom itself (a nuclear-medicine image)
    with pytest.raises(UnreadableImageError, match="modality NM is not a radiograph"):
        decode_dicom(path)
    film = decode_dicom(path, allowed_modalities=None)
    assert film.pixels.dtype == np.uint8 and film.pixels.std() > 0


def _pydicom_film(path: Path, y_min: float, y_max: float) -> np.ndarray:
    """The 8-bit film that pydicom's own VOI output gives when [y_min, y_max] is mapped to [0, 255]."""
    ds = pydicom.dcmread(path)
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=0)
    film = np.clip(np.rint((np.asarray(values, dtype=np.float64) - y_min) * 255 / (y_max - y_min)), 0, 255)
    film = film.astype(np.uint8)
    return 255 - film if ds.PhotometricInterpretation == "MONOCHROME1" else film


def _signed_ramp() -> np.ndarray:
    return np.tile(np.linspace(-2048, 2047, 64), (48, 1)).astype(np.int16)


# (window, extra _write_film arguments, pydicom's y_min and y_max for that dataset, worked out by hand)
VOI_CASES = {
    "wide window past the stored range": ((2048, 8192), {}, 0, 4095),
    "offset window reaching below zero": ((500, 4096), {}, 0, 4095),
    "offset window inside the dtype range": ((3000, 4096), {}, 0, 4095),
    "window below the stored range": ((-500, 400), {}, 0, 4095),
    "width-1 window mid-range": ((2048, 1), {}, 0, 4095),
    "width-1 window at the bottom": ((0, 1), {}, 0, 4095),
    "wide window, MONOCHROME1": ((2048, 8192), {"photometric": "MONOCHROME1"}, 0, 4095),
    "LINEAR_EXACT": ((1000, 6000), {"voi_function": "LINEAR_EXACT"}, 0, 4095),
    "SIGMOID": ((2048, 1024), {"voi_function": "SIGMOID"}, 0, 4095),
    "wide SIGMOID": ((2048, 20000), {"voi_function": "SIGMOID"}, 0, 4095),
    "signed with rescale": ((500, 6000), {"signed": True, "rescale": (2.0, -100.0)}, -4196.0, 3994.0),
    "signed, negative slope": ((0, 3000), {"signed": True, "rescale": (-1.0, 0.0)}, 2048.0, -2047.0),
}


@pytest.mark.parametrize("case", list(VOI_CASES))
def test_window_output_range_is_pydicoms_y_min_to_y_max(tmp_path: Path, case: str) -> None:
    window, extra, y_min, y_max = VOI_CASES[case]
    pixels = _signed_ramp() if extra.get("signed") else _ramp()
    path = _write_film(tmp_path / "f.dcm", pixels, window=window, **extra)
    film = decode_dicom(path).pixels
    np.testing.assert_array_equal(film, _pydicom_film(path, y_min, y_max))


def test_a_wide_window_is_not_restretched(tmp_path: Path) -> None:
    film = decode_dicom(_write_film(tmp_path / "w.dcm", _ramp(), window=(2048, 8192))).pixels
    # the stored range 0..4095 is the middle half of the window: it covers the middle half of the grey levels
    assert (film.min(), film.max()) == (64, 191)


def test_a_width_1_window_gives_two_levels(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 64, (64, 1))  # 0, 64, ..., 4032
    film = decode_dicom(_write_film(tmp_path / "w1.dcm", ramp, window=(2048, 1))).pixels
    np.testing.assert_array_equal(film[0], np.where(ramp[0] <= 2047, 0, 255))
    above = decode_dicom(_write_film(tmp_path / "w0.dcm", ramp, window=(0, 1))).pixels
    assert (above == 255).all()  # every value is above the window: white, not an all-zero film


def test_voi_lut_output_range_is_set_by_the_lut_descriptor(tmp_path: Path) -> None:
    lut = np.zeros(4096)
    lut[2048:] = 40000  # a 16-bit LUT using part of its range: 40000 of 65535
    film = decode_dicom(_write_film(tmp_path / "lut16.dcm", _ramp(), window=None, voi_lut=lut)).pixels
    assert set(np.unique(film)) == {0, 156}
    ramp_lut = np.arange(4096) // 16  # 8 bits per entry
    path = _write_film(tmp_path / "lut8.dcm", _ramp(), window=None, voi_lut=ramp_lut, lut_bits=8)
    np.testing.assert_array_equal(decode_dicom(path).pixels, _pydicom_film(path, 0, 255))


def test_a_lut_declared_wider_than_its_entries_uses_the_entries_range_and_says_so(tmp_path: Path) -> None:
    lut = np.zeros(4096)
    lut[2048:] = 4095  # 12-bit entries in a LUT declared as 16 bits (common in vendors' files)
    decoded = decode_dicom(_write_film(tmp_path / "lut16.dcm", _ramp(), window=None, voi_lut=lut))
    assert set(np.unique(decoded.pixels)) == {0, 255}
    assert any("declares 16 bits per entry but its entries fit in 12" in note for note in decoded.notes)


def test_voi_lut_is_preferred_to_the_window_and_sets_the_range(tmp_path: Path) -> None:
    lut = np.linspace(0, 65535, 4096)
    path = _write_film(tmp_path / "both.dcm", _ramp(), window=(2048, 100), voi_lut=lut)
    film = decode_dicom(path).pixels
    np.testing.assert_array_equal(film, _pydicom_film(path, 0, 65535))
    assert len(np.unique(film)) > 60  # the LUT's gentle ramp, not the narrow window


def test_an_unusable_window_falls_back_to_min_max_and_says_so(tmp_path: Path) -> None:
    film = decode_dicom(_write_film(tmp_path / "w0.dcm", _ramp(), window=(2048, 0)))
    assert (film.pixels.min(), film.pixels.max()) == (0, 255)
    assert any("min/max" in note and "Window Width" in note for note in film.notes)


@pytest.mark.parametrize("name", ["empty.dcm", "empty.png", "empty"])
def test_an_empty_file_is_reported_as_empty(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(UnreadableImageError) as info:
        decode_film(path)
    assert info.value.reason == "file is empty (0 bytes)"
    if name.endswith(".dcm"):
        with pytest.raises(UnreadableImageError, match=r"file is empty \(0 bytes\)"):
            read_header(path)
