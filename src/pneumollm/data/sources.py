"""Where a cohort comes from: a manifest CSV, a DICOM folder with a labels CSV, or the embedded demo."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pneumollm.data.cohort import CohortError, CohortListing, read_dicom_folder, read_manifest

SOURCE_KINDS = ("manifest", "dicom_folder", "demo")


def _require(source: Mapping[str, Any], key: str) -> str:
    value = source.get(key)
    if not value or value == "???":  # "???": OmegaConf's mark of a value the user must set
        raise CohortError(f"data.source.{key} is required for data.source.kind={source.get('kind')!r}: "
                          f"add data.source.{key}=/path/... on the command line")
    return str(value)


def list_cohort(source: Mapping[str, Any], label_map: Mapping[str, int] | None = None,
                progress: bool = True) -> CohortListing:
    """Read the films and labels of the cohort that ``source`` (the ``data.source`` config) describes."""
    kind = source.get("kind")
    if kind == "manifest":
        return read_manifest(_require(source, "manifest"), label_map=label_map)
    if kind == "dicom_folder":
        return read_dicom_folder(_require(source, "folder"), _require(source, "labels"), label_map=label_map)
    if kind == "demo":
        from pneumollm.data.synthetic import generate_demo_cohort

        out_dir = Path(_require(source, "dir"))
        labels = generate_demo_cohort(
            out_dir, n_patients=int(source.get("n_patients", 80)), seed=int(source.get("seed", 0)),
            image_size=int(source.get("image_size", 512)),
            positive_fraction=float(source.get("positive_fraction", 0.63)),
            include_faulty=bool(source.get("include_faulty", True)),
            signal_strength=float(source.get("signal_strength", 1.0)), progress=progress,
        )
        return read_dicom_folder(Path(labels).parent / "dicom", labels, label_map=label_map)
    raise CohortError(f"unknown data.source.kind {kind!r}; choose one of {', '.join(SOURCE_KINDS)}")
