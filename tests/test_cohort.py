"""Reading cohorts: manifests and DICOM folders with labels keyed by file or SOP Instance UID."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumollm.data.cohort import CohortError, read_dicom_folder, read_manifest
from tests.helpers import make_toy_manifest
from tests.test_dicom import _ramp, _write_film


def test_manifest_paths_are_relative_to_the_manifest(tmp_path: Path) -> None:
    manifest = make_toy_manifest(tmp_path / "cohort", n_patients=4)
    listing = read_manifest(manifest)
    assert len(listing.records) == 4 and not listing.skipped
    first = listing.records[0]
    assert first.path.is_file() and first.image_id == "films/p000_0.png" and first.label == 1


def test_missing_label_or_patient_or_file_is_skipped_with_a_reason(tmp_path: Path) -> None:
    make_toy_manifest(tmp_path, n_patients=3)
    manifest = tmp_path / "edited.csv"
    manifest.write_text("path,patient_id,label\n"
                        "films/p000_0.png,P000,pneumoconiosis\n"
                        "films/p001_0.png,,normal\n"
                        "films/p002_0.png,P002,\n"
                        "films/gone.png,P003,normal\n")
    listing = read_manifest(manifest)
    reasons = {s.image_id: s.reason for s in listing.skipped}
    assert reasons == {"films/p001_0.png": "missing patient id", "films/p002_0.png": "missing label",
                       "films/gone.png": "file not found"}
    assert [r.image_id for r in listing.records] == ["films/p000_0.png"]


def test_unknown_label_is_an_error_naming_the_row(tmp_path: Path) -> None:
    manifest = make_toy_manifest(tmp_path, n_patients=3)
    manifest.write_text(manifest.read_text().replace("P001,normal", "P001,maybe"))
    with pytest.raises(CohortError, match=r"manifest.csv row 3, column 'label': unknown label value 'maybe'"):
        read_manifest(manifest)
    extra = read_manifest(manifest, label_map={"maybe": 0})
    assert [r.label for r in extra.records] == [1, 0, 1]


def test_manifest_without_required_columns_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,diagnosis\na.png,normal\n")
    with pytest.raises(CohortError, match="missing column"):
        read_manifest(tmp_path / "m.csv")


def test_a_film_listed_twice_is_an_error(tmp_path: Path) -> None:
    manifest = make_toy_manifest(tmp_path, n_patients=2)
    manifest.write_text(manifest.read_text() + "films/p000_0.png,P000,pneumoconiosis\n")
    with pytest.raises(CohortError, match="listed twice"):
        read_manifest(manifest)


def _dicom_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dicoms"
    (folder / "a").mkdir(parents=True)
    for i in range(3):
        _write_film(folder / "a" / f"f{i}.dcm", _ramp())
    (folder / "README.txt").write_text("not a film")
    return folder


def test_dicom_folder_labels_by_file_take_patient_from_the_tag(tmp_path: Path) -> None:
    folder = _dicom_folder(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na/f0.dcm,1\na/f1.dcm,normal\nmissing.dcm,1\n")
    listing = read_dicom_folder(folder, labels)
    assert sorted(r.image_id for r in listing.records) == ["a/f0.dcm", "a/f1.dcm"]
    assert {r.patient_id for r in listing.records} == {"PX1"}
    reasons = sorted(s.reason for s in listing.skipped)
    assert reasons[0].startswith("labels row 4: no matching DICOM file")
    assert reasons[1] == "no label row for this file"


def test_dicom_folder_labels_by_sop_instance_uid(tmp_path: Path) -> None:
    import pydicom

    folder = _dicom_folder(tmp_path)
    uid = pydicom.dcmread(folder / "a" / "f2.dcm", stop_before_pixels=True).SOPInstanceUID
    labels = tmp_path / "labels.csv"
    labels.write_text(f"sop_instance_uid,label,patient_id\n{uid},pneumoconiosis,P77\n")
    listing = read_dicom_folder(folder, labels)
    assert [(r.image_id, r.label, r.patient_id) for r in listing.records] == [("a/f2.dcm", 1, "P77")]
    assert len(listing.skipped) == 2


@pytest.mark.parametrize("second", ["a/f0.dcm", "dicoms/a/f0.dcm"])  # the same name, or the same file via the CSV
def test_dicom_folder_two_label_rows_for_one_file_are_an_error(tmp_path: Path, second: str) -> None:
    folder = _dicom_folder(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"file,label\na/f0.dcm,pneumoconiosis\na/f1.dcm,normal\n{second},normal\n")
    with pytest.raises(CohortError) as info:
        read_dicom_folder(folder, labels)
    message = str(info.value)
    assert message.startswith(f"{labels} row 4: ") and "row 2" in message
    assert str(folder / "a" / "f0.dcm") in message


def test_dicom_folder_two_label_rows_for_one_sop_instance_uid_are_an_error(tmp_path: Path) -> None:
    import pydicom

    folder = _dicom_folder(tmp_path)
    uid = pydicom.dcmread(folder / "a" / "f2.dcm", stop_before_pixels=True).SOPInstanceUID
    labels = tmp_path / "labels.csv"
    labels.write_text(f"sop_instance_uid,label\n{uid},pneumoconiosis\n1.2.3,normal\n{uid},normal\n")
    with pytest.raises(CohortError) as info:
        read_dicom_folder(folder, labels)
    message = str(info.value)
    assert message.startswith(f"{labels} row 4: ") and "row 2" in message and uid in message


def test_dicom_folder_empty_and_non_dicom_files_are_named_as_such(tmp_path: Path) -> None:
    folder = _dicom_folder(tmp_path)
    (folder / "a" / "empty.dcm").write_bytes(b"")  # scanned (DICOM suffix), no label row
    (folder / "a" / "blank").write_bytes(b"")  # named in the labels CSV
    (folder / "a" / "scan.bin").write_bytes(b"\x00" * 300)  # named in the labels CSV, no DICM marker
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na/f0.dcm,1\na/f1.dcm,0\na/f2.dcm,0\na/blank,1\na/scan.bin,0\nnone.dcm,1\n")
    listing = read_dicom_folder(folder, labels)
    reasons = {s.image_id: s.reason for s in listing.skipped}
    assert reasons["a/empty.dcm"] == "file is empty (0 bytes)"
    assert reasons["a/blank"] == "labels row 5: a/blank is empty (0 bytes)"
    assert reasons["a/scan.bin"] == "labels row 6: a/scan.bin is not a DICOM file (no DICM marker)"
    assert reasons["none.dcm"] == f"labels row 7: no matching DICOM file in {folder}"
    assert len(listing.records) == 3


def test_an_empty_manifest_says_what_it_needs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(CohortError, match=r"empty.csv: the file is empty; it needs a header row "
                                          r"\(path,patient_id,label\) and one row per film"):
        read_manifest(empty)
    empty.write_text("path,patient_id,label\n")
    with pytest.raises(CohortError, match=r"a header \(path, patient_id, label\) but no rows; add one row per film"):
        read_manifest(empty)


def test_a_folder_given_as_the_manifest_names_the_csv_files_inside(tmp_path: Path) -> None:
    manifest = make_toy_manifest(tmp_path / "cohort", n_patients=2)
    with pytest.raises(CohortError) as info:
        read_manifest(manifest.parent)
    message = str(info.value)
    assert message.startswith(f"{manifest.parent} is a folder, not a CSV file")
    assert f"it holds manifest.csv: give one of them, e.g. {manifest}" in message
    assert "data=dicom_folder" in message  # a folder of films has its own source kind
    (tmp_path / "bare").mkdir()
    with pytest.raises(CohortError, match=r"is a folder, not a CSV file .* and holds no CSV file"):
        read_manifest(tmp_path / "bare")


def test_windows_backslash_paths_are_read_when_the_file_exists_with_slashes(tmp_path: Path) -> None:
    manifest = make_toy_manifest(tmp_path, n_patients=3)
    manifest.write_text(manifest.read_text().replace("films/", "films\\") + "C:\\scans\\p9.png,P009,normal\n")
    listing = read_manifest(manifest)
    assert [r.image_id for r in listing.records] == ["films/p000_0.png", "films/p001_0.png", "films/p002_0.png"]
    assert all(r.path.is_file() for r in listing.records)
    assert listing.notes == [f"{manifest}: 3 path(s) written with Windows backslashes were read with /"]
    (skipped,) = listing.skipped
    assert skipped.reason.startswith("file not found (C:\\scans\\p9.png is a Windows drive path: list films "
                                     "relative to the CSV's folder, with /)")


def test_an_unknown_label_column_lists_the_columns_and_names_the_setting(tmp_path: Path) -> None:
    from pneumollm.data.targets import LabelTask

    manifest = make_toy_manifest(tmp_path, n_patients=3)
    manifest.write_text(manifest.read_text().replace("path,patient_id,label", "path,patient_id,outcome"))
    with pytest.raises(CohortError) as info:
        read_manifest(manifest)
    assert str(info.value) == (f"{manifest}: no label column (looked for label, diagnosis, target, class, in any "
                               "case); the columns are 'path', 'patient_id', 'outcome': name the one holding the "
                               "labels with data.label_column=NAME")
    assert len(read_manifest(manifest, task=LabelTask(label_column="outcome")).records) == 3
    with pytest.raises(CohortError, match=r"no column 'result' \(data.label_column\); the columns are 'path', "
                                          r"'patient_id', 'outcome': set data.label_column to one of them"):
        read_manifest(manifest, task=LabelTask(label_column="result"))
