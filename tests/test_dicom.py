"""DICOM decoding with pydicom's own LUT functions, on real films and on crafted edge cases."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
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
                modality: str = "DX", voi_lut: np.ndarray | None = None, with_pixels: bool = True) -> Path:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality, ds.StudyInstanceUID = "PX1", modality, generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 12, 11, 0, 1
    ds.PhotometricInterpretation = photometric
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = pydicom.Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.LUTData = voi_lut.astype("<u2").tobytes()
        ds.VOILUTSequence = [item]
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
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
    lut[2048:] = 4095  # a step LUT: only two output levels
    film = decode_dicom(_write_film(tmp_path / "lut.dcm", _ramp(), window=None, voi_lut=lut)).pixels
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
