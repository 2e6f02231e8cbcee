"""Labels CSVs and manifests that are not plain UTF-8: BOMs, UTF-16, cp1252 (with a note), undecodable bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumollm.data.cohort import CohortError, read_dicom_folder, read_manifest
from tests.helpers import make_toy_manifest
from tests.test_dicom import _ramp, _write_film

ROWS = "path,patient_id,label\nfilms/p000_0.png,Müller,pneumoconiosis\nfilms/p001_0.png,Ø-17,normal\n"


def _manifest(tmp_path: Path, data: bytes) -> Path:
    make_toy_manifest(tmp_path, n_patients=3)
    path = tmp_path / "edited.csv"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom"])
def test_utf8_and_utf16_with_a_bom_are_read_without_a_note(tmp_path: Path, encoding: str) -> None:
    if encoding.endswith("-bom"):  # explicit byte order, with its BOM
        data = ("\ufeff" + ROWS).encode(encoding.removesuffix("-bom"))
    else:
        data = ROWS.encode(encoding)
    listing = read_manifest(_manifest(tmp_path, data))
    assert [r.patient_id for r in listing.records] == ["Müller", "Ø-17"]
    assert listing.notes == []


def test_cp1252_is_read_with_a_note_naming_the_file_offset_and_encoding(tmp_path: Path) -> None:
    data = (ROWS + "films/p002_0.png,“quoted”,normal\n").encode("cp1252")  # curly quotes: cp1252, not latin-1
    manifest = _manifest(tmp_path, data)
    listing = read_manifest(manifest)
    assert [r.patient_id for r in listing.records] == ["Müller", "Ø-17", "“quoted”"]
    assert len(listing.notes) == 1
    note, offset = listing.notes[0], data.index("ü".encode("cp1252"))
    assert str(manifest) in note and "cp1252" in note and f"byte {offset}" in note


def test_a_latin1_labels_csv_of_a_dicom_folder_keeps_its_patient_ids(tmp_path: Path) -> None:
    folder = tmp_path / "dicoms"
    folder.mkdir()
    _write_film(folder / "a.dcm", _ramp())
    _write_film(folder / "b.dcm", _ramp())
    labels = tmp_path / "labels.csv"
    labels.write_bytes("file,patient_id,label\na.dcm,Müller,1\nb.dcm,Ø,0\n".encode("latin-1"))
    listing = read_dicom_folder(folder, labels)
    assert sorted(r.patient_id for r in listing.records) == ["Müller", "Ø"]
    assert len(listing.notes) == 1 and str(labels) in listing.notes[0]


def test_a_file_neither_utf8_nor_cp1252_is_an_error_naming_file_and_offset(tmp_path: Path) -> None:
    data = ROWS.encode("cp1252") + b"films/p001_0.png,P\x81,normal\n"  # 0x81 is undefined in cp1252
    manifest = _manifest(tmp_path, data)
    with pytest.raises(CohortError) as info:
        read_manifest(manifest)
    message, offset = str(info.value), data.index(b"\x81")
    assert message.startswith(str(manifest)) and f"byte {offset}" in message and "UTF-8" in message


def test_the_offset_counts_the_utf8_bom(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + ROWS.encode("cp1252")  # a UTF-8 BOM on a cp1252 file
    listing = read_manifest(_manifest(tmp_path, data))
    assert [r.patient_id for r in listing.records] == ["Müller", "Ø-17"]
    offset = data.index(b"\xfc")
    assert f"byte {offset}" in listing.notes[0]
