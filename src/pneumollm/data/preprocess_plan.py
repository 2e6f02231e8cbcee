"""A run's preprocessing plan: ``PreprocessSettings`` made from the ``data`` config in one place, and kept on disk.

``preprocess_settings_from_config`` is the only code that turns data settings (image size, lung segmenter and
crop margin, allowed modalities, minimum film size) into ``PreprocessSettings``: the crop's ``margin`` is taken
out of ``lungs`` here, and the rest of ``lungs`` is the segmenter's config (``build_segmenter``). Every run folder
records the result in ``preprocessing.json`` when it starts (as nnU-Net's predictor reads the ``plans.json`` of
its training), and prediction, export and external validation read that file instead of rebuilding the settings;
folders written before it existed fall back to their ``config.yaml``.

This module lives apart from ``data.preprocess`` on purpose: that module's source is hashed into every prepared
film's cache key and every run's config hash, this one's is not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pneumollm.data.dicom import RADIOGRAPH_MODALITIES
from pneumollm.data.lungs.base import LungSegmenter
from pneumollm.data.preprocess import PIPELINE_VERSION, PreprocessSettings, code_fingerprint
from pneumollm.errors import UserError
from pneumollm.utils.io import atomic_write_json

PREPROCESSING_FILE = "preprocessing.json"
PLAN_FORMAT = 1
_SETTING_NAMES = tuple(f.name for f in fields(PreprocessSettings))


class PreprocessPlanError(UserError):
    """A recorded preprocessing plan that cannot be read (names the file and what to do)."""


def preprocess_settings_from_config(data: Mapping[str, Any] | DictConfig) -> PreprocessSettings:
    """The preprocessing of a ``data`` config (or of a datamodule's arguments of the same names): ``image_size``,
    ``lungs`` (its ``margin`` is the crop's, the rest the segmenter's config), ``allowed_modalities`` and
    ``min_film_size``."""
    plain = OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else dict(data)
    lungs = dict(plain.get("lungs") or {})
    margin = float(lungs.pop("margin", 0.0))
    modalities = plain.get("allowed_modalities")
    return PreprocessSettings(image_size=int(plain.get("image_size", 224)), lungs=lungs, margin=margin,
                              allowed_modalities=tuple(RADIOGRAPH_MODALITIES if modalities is None else modalities),
                              min_size=int(plain.get("min_film_size", 64)))


def build_segmenter(settings: PreprocessSettings) -> LungSegmenter:
    """Instantiate the lung segmenter of ``settings`` (its ``lungs`` config)."""
    from hydra.utils import instantiate

    return instantiate(dict(settings.lungs), _convert_="object")


def settings_record(settings: PreprocessSettings) -> dict[str, Any]:
    """The settings as plain JSON data (what ``export.json`` keeps as ``preprocessing``)."""
    return asdict(settings)


def settings_from_record(record: Mapping[str, Any], where: str | Path) -> PreprocessSettings:
    """The settings of a ``settings_record`` (``preprocessing.json``, ``export.json``); ``where`` names the file in
    the error when a setting is missing."""
    missing = [name for name in _SETTING_NAMES if name not in record]
    if missing:
        raise PreprocessPlanError(f"{where}: the preprocessing record lacks {', '.join(missing)}; delete the file "
                                  "to fall back to the run's config.yaml, or re-run the training")
    return PreprocessSettings(image_size=int(record["image_size"]), lungs=dict(record["lungs"]),
                              margin=float(record["margin"]), allowed_modalities=tuple(record["allowed_modalities"]),
                              min_size=int(record["min_size"]))


def write_plan(path: Path, settings: PreprocessSettings) -> Path:
    """Write ``preprocessing.json``: the settings, and the pipeline version, preprocessing-code fingerprint and
    prepared-cohort folder name (``tag``) they gave at training time."""
    return atomic_write_json(path, {"format": PLAN_FORMAT, **settings_record(settings),
                                    "pipeline_version": PIPELINE_VERSION, "code": code_fingerprint(),
                                    "tag": settings.tag()})


def read_plan(path: Path) -> PreprocessSettings | None:
    """The settings a ``preprocessing.json`` records; None when the file does not exist (an older run)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise PreprocessPlanError(f"{path}: unreadable ({err}); delete it to fall back to the run's config.yaml, "
                                  "or re-run the training") from None
    if not isinstance(record, dict) or record.get("format") != PLAN_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise PreprocessPlanError(f"{path}: preprocessing plan format {found} (this suite reads {PLAN_FORMAT}); "
                                  "delete it to fall back to the run's config.yaml, or update the suite")
    return settings_from_record(record, path)
