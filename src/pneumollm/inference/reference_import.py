"""``pneumollm-import-reference``: the authors' published checkpoint(s) as an export folder of this suite.

Each ``trainable_bestvalpt.pth`` of the reference implementation (CodeMonsterPHD/PneumoLLM) is read safely, its
args turned into the suite's config (``models.weights.reference_checkpoint``: the architecture settings plus the
reference's quirks), its tensors checked against the PneumoLLM that config builds (on the meta device: no weights
loaded) and converted, and the result written as ``pneumollm-export`` writes a trained arm (``fold<k>.safetensors``,
``fold<k>.yaml``, ``export.json``, ``README.md``), so ``pneumollm-predict`` uses it unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pneumollm.config import register_resolvers
from pneumollm.errors import ConfigError
from pneumollm.inference.export import export_record, write_fold, write_record
from pneumollm.inference.models import build_net
from pneumollm.models.components.frozen import frozen_tensor_fingerprints
from pneumollm.models.weights.reference_checkpoint import (
    REFERENCE_QUIRKS,
    ReferenceCheckpoint,
    ReferenceCheckpointError,
    ReferenceSettings,
    imported_parameter_shapes,
    load_reference_checkpoint,
    map_reference_state,
    reference_settings,
)
from pneumollm.paths import conf_dir
from pneumollm.utils.console import say
from pneumollm.utils.io import sha256_file

DEFAULT_ENCODER = "openai/clip-vit-large-patch14"
DEFAULT_LLM = "huggyllama/llama-7b"
IMPORT_SIZES = ("full", "tiny")
IMPORT_ARM = "pneumollm_reference"
IMPORT_LABEL = "PneumoLLM (authors' weights)"
IMPORT_EXPERIMENT = "reference_import"
IMPORT_COHORT = "reference"  # the authors' cohort, not part of the export
SOURCE = "the reference implementation's checkpoint (CodeMonsterPHD/PneumoLLM, `trainable_bestvalpt.pth`)"
NOTE = "imported, not trained by this suite"


def _hydra_value(value: Any) -> str:
    """A value as the right-hand side of a Hydra override (strings quoted, so paths and labels pass as given)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    # Hydra's quoted strings: escape quotes, and the backslashes right before a quote or the closing quote
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", str(value))
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text) + "'"


def import_overrides(settings: ReferenceSettings, size: str, encoder: str, llm: str, out_dir: Path) -> list[str]:
    """The Hydra overrides of ``conf/train.yaml`` that describe a reference checkpoint's model."""
    if size not in IMPORT_SIZES:
        raise ReferenceCheckpointError(f"size {size!r}: choose one of {IMPORT_SIZES}")
    values: dict[str, Any] = {
        "experiment.name": IMPORT_EXPERIMENT, "experiment.arm": IMPORT_ARM, "experiment.label": IMPORT_LABEL,
        "data.source.manifest": None, "data.cohort": IMPORT_COHORT, "paths.run_dir": str(out_dir),
        **settings.config_values()}
    if size == "full":  # the tiny towers are seeded random builds: no weights to name
        values.update({"encoder.name_or_path": encoder, "llm.name_or_path": llm})
    groups = [f"size={size}", "model=pneumollm", "data=manifest", "token_engine=cmte", "emitter=emitter",
              "head=mean_linear", "logger=none"]
    return [*groups, *(f"{k}={_hydra_value(v)}" for k, v in values.items())]


def compose_import_config(overrides: Sequence[str]) -> DictConfig:
    """The resolved training config for ``overrides`` (as a run folder's ``config.yaml`` holds it)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_resolvers()
    try:
        with initialize_config_dir(str(conf_dir()), version_base=None):
            config = compose("train", overrides=list(overrides))
        return OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"the imported model's config cannot be composed: {str(err).splitlines()[0]} (check --set)"
                          ) from None


def expected_parameters(config: DictConfig) -> dict[str, torch.Size]:
    """The names and shapes a reference checkpoint must fill in the model of ``config`` (built on the meta
    device as its architecture: nothing is loaded or allocated)."""
    from pneumollm.models.param_count import build_model, offline_architecture_overrides

    offline = [*offline_architecture_overrides(config.model), "llm.quantization=null"]
    config = OmegaConf.merge(config, OmegaConf.from_dotlist([f"model.{o}" for o in offline]))
    return imported_parameter_shapes(build_model(config, device="meta"))


def _json_safe(args: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(args, default=str))


def _fold_entry(fold: int, files: dict[str, Any], checkpoint: ReferenceCheckpoint, weights: dict[str, torch.Tensor],
                prints: dict[str, str] | None) -> dict[str, Any]:
    trained = sum(v.numel() for k, v in weights.items() if not k.startswith("net.token_engine."))
    return {**files, "threshold": 0.5, "threshold_mode": "fixed", "selected_epoch": checkpoint.epoch,
            "metrics": {}, "frozen_fingerprints": prints, "trainable_params": trained}


def import_reference(checkpoints: Sequence[str | Path], out_dir: str | Path, *, encoder: str = DEFAULT_ENCODER,
                     llm: str = DEFAULT_LLM, size: str = "full", overrides: Sequence[str] = (),
                     fingerprint: bool = False) -> Path:
    """Write the export of the reference ``checkpoints`` (fold k = the k-th file) into ``out_dir``.

    ``encoder``/``llm``: the base weights (hub ids or folders) recorded in the config. ``overrides``: Hydra
    overrides applied last (``lungs=unet``, ``data.image_size=...``; ``size=tiny`` builds tiny random towers, for
    tests). ``fingerprint``: load the base weights now and record their fingerprints, so later loads are checked.
    """
    if not checkpoints:
        raise ReferenceCheckpointError("no checkpoint given")
    out_dir = Path(out_dir)
    prepared = []
    for path in map(Path, checkpoints):  # everything is read and checked before anything is written
        checkpoint = load_reference_checkpoint(path)
        settings = reference_settings(checkpoint.args, checkpoint.state, str(path))
        config = compose_import_config([*import_overrides(settings, size, encoder, llm, out_dir.resolve()),
                                        *overrides])
        mapped = map_reference_state(checkpoint.state, expected_parameters(config), str(path))
        say(f"{path}: epoch {checkpoint.epoch}, {len(mapped)} tensors mapped"
            + (f" (args without {', '.join(settings.defaulted)}: the reference's defaults used)"
               if settings.defaulted else ""))
        prepared.append((path, checkpoint, settings, config, {f"net.{k}": v for k, v in mapped.items()}))
    out_dir.mkdir(parents=True, exist_ok=True)
    folds, sources = [], []
    for fold, (path, checkpoint, settings, config, weights) in enumerate(prepared):
        prints = None
        if fingerprint:
            say(f"fold {fold}: loading the base weights to fingerprint them (minutes at full size)")
            net, _ = build_net(config, weights, path, torch.device("cpu"))
            prints = frozen_tensor_fingerprints(net)
            del net
        folds.append(_fold_entry(fold, write_fold(out_dir, fold, weights, config), checkpoint, weights, prints))
        sources.append({"fold": fold, "file": path.name, "path": str(path.resolve()), "sha256": sha256_file(path),
                        "epoch": checkpoint.epoch, "args": _json_safe(checkpoint.args),
                        "defaulted_args": list(settings.defaulted), "settings": settings.config_values()})
    record = export_record(prepared[0][3], folds)
    record.update({"summary": {}, "pooled_auc": None, "imported": {
        "source": SOURCE, "note": NOTE, "checkpoints": sources, "base_weights_checked": fingerprint,
        "quirks": [{"setting": q.setting, "value": q.value, "why": q.why} for q in REFERENCE_QUIRKS]}})
    return write_record(out_dir, record)
