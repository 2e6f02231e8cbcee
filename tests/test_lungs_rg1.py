"""A real PA chest CR (pydicom-data's RG1_UNCI.dcm) is cropped to its lungs by both segmenters."""

from __future__ import annotations

import numpy as np
import pytest

from pneumollm.data.lungs.crop import crop_to_lungs
from pneumollm.data.lungs.qc import QCItem, write_qc_sheet
from pneumollm.data.lungs.threshold import ThresholdSegmenter
from tests.helpers import pydicom_test_file, shared_path

# The lung fields as judged on the film (1955 x 1841): apices near row 150, costophrenic angles near
# row 1600, lateral walls near columns 110 and 1690. Any crop to the lungs must hold this inner core.
LUNG_CORE = (250, 250, 1450, 1600)


@pytest.fixture(scope="module")
def rg1() -> np.ndarray:
    """RG1_UNCI.dcm as an 8-bit film, lungs dark: modality LUT, VOI window, inverted (MONOCHROME1)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    dataset = pydicom.dcmread(pydicom_test_file("RG1_UNCI.dcm"))
    values = apply_voi_lut(apply_modality_lut(dataset.pixel_array, dataset), dataset).astype(np.float64)
    assert dataset.PhotometricInterpretation == "MONOCHROME1"
    values = values.max() - values
    return np.round(255 * (values - values.min()) / (values.max() - values.min())).astype(np.uint8)


def assert_cropped_to_lungs(film: np.ndarray, result) -> None:
    assert result.status == "cropped", result.reason
    top, left, bottom, right = result.box
    fraction = (bottom - top) * (right - left) / film.size
    assert 0.4 < fraction < 0.95, f"crop covers {fraction:.0%} of the film"
    core_top, core_left, core_bottom, core_right = LUNG_CORE
    assert top <= core_top and left <= core_left and bottom >= core_bottom and right >= core_right, result.box


def test_threshold_crops_rg1_to_its_lungs(rg1, tmp_path):
    assert rg1.shape == (1955, 1841)
    result = crop_to_lungs(rg1, ThresholdSegmenter(), "RG1_UNCI.dcm", margin=0.05)
    assert_cropped_to_lungs(rg1, result)
    # Pinned from the implementation that shrank the film with skimage and checked the full-size mask
    # (commit 87b5cab): finding the box at the working size gives the same box and mask.
    assert result.box == (67, 101, 1597, 1756)
    assert int(result.mask.sum()) == 1_002_233
    sheet = write_qc_sheet([QCItem(rg1, result.mask, result.box, "RG1_UNCI.dcm | threshold | cropped")],
                           tmp_path / "rg1_threshold.png", columns=1)
    assert sheet.stat().st_size > 10_000


@pytest.mark.shared
def test_unet_crops_rg1_to_its_lungs(rg1, tmp_path):
    from pneumollm.data.lungs.unet import UNetSegmenter

    result = crop_to_lungs(rg1, UNetSegmenter(shared_path("hybridgnet-unet", "unet.pt")), "RG1_UNCI.dcm")
    assert_cropped_to_lungs(rg1, result)
