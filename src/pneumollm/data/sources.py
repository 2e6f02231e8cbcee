"""Where a cohort comes from: a manifest CSV, a DICOM folder with a labels CSV, or the embedded demo."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pneumollm.data.cohort import CohortError, CohortListing, read_dicom_folder, read_manifest
from pneumollm.data.targets import MULTICLASS, MULTILABEL, LabelTask

SOURCE_KINDS = ("manifest", "dicom_folder", "demo")
DEMO_STAGE_COLUMN = "stage"  # the demo's labels.csv column of ILO profusion categories (0-3)


def _require(source: Mapping[str, Any], key: str) -> str:
    value = source.get(key)
    if not value or value == "???":  # "???": OmegaConf's mark of a value the user must set
        raise CohortError(f"data.source.{key} is required for data.source.kind={source.get('kind')!r}: "
                          f"add data.source.{key}=/path/... on the command line")
    return str(value)


def list_cohort(source: Mapping[str, Any], label_map: Mapping[str, int] | None = None,
                progress: bool = True, task: LabelTask | None = None) -> CohortListing:
    """Read the films and labels of the cohort that ``source`` (the ``data.source`` config) describes.

    ``task``: how to read the labels (binary by default, with ``label_map``'s extra spellings).
    """
    task = task or LabelTask(label_map=dict(label_map or {}))
    kind = source.get("kind")
    if kind == "manifest":
        return read_manifest(_require(source, "manifest"), task=task)
    if kind == "dicom_folder":
        return read_dicom_folder(_require(source, "folder"), _require(source, "labels"), task=task)
    if kind == "demo":
        if task.task == MULTILABEL:
            raise CohortError("the demo cohort carries stages, not co-findings: data.task=multilabel needs a cohort "
                              "of your own with one 0/1 column per finding (data=manifest or data=dicom_folder)")
        if task.task == MULTICLASS and task.label_column is None:
            task = replace(task, label_column=DEMO_STAGE_COLUMN)
        from pneumollm.data.synthetic import generate_demo_cohort

        out_dir = Path(_require(source, "dir"))
        labels = generate_demo_cohort(
            out_dir, n_patients=int(source.get("n_patients", 80)), seed=int(source.get("seed", 0)),
            image_size=int(source.get("image_size", 512)),
            positive_fraction=float(source.get("positive_fraction", 0.63)),
            include_faulty=bool(source.get("include_faulty", True)),
            signal_strength=float(source.get("signal_strength", 1.0)), progress=progress,
        )
        return read_dicom_folder(Path(labels).parent / "dicom", labels, task=task)
    raise CohortError(f"unknown data.source.kind {kind!r}; choose one of {', '.join(SOURCE_KINDS)}")
