"""Helpers shared by the tests: locating ../shared data and pydicom-data files, skipping when absent."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PNEUMOLLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path inside ``../shared/data``; skips the calling test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared test data, absent on this machine)")
    return path


def pydicom_test_file(name: str) -> Path:
    """A file of the PyPI package ``pydicom-data``; skips when the package is not installed."""
    try:
        from pydicom.data import get_testdata_file
    except ImportError:  # pragma: no cover
        pytest.skip("pydicom is not installed")
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} needs the PyPI package pydicom-data (pip install pydicom-data)")
    return Path(path)


def write_cohort(root: Path, films: Iterable[tuple[str, np.ndarray | None, Sequence[object]]],
                 header: Sequence[str] = ("path", "patient_id", "label"), manifest: str = "manifest.csv") -> Path:
    """Write a cohort as the suite reads it: each film ``(path, pixels, other cells)`` as an 8-bit PNG at ``path``
    (relative to ``root``; ``pixels`` None lists a film that does not exist) and one manifest row ``path,cells``
    under ``header``; returns the manifest. The one place the tests write films and their manifest."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [",".join(header)]
    for name, pixels, cells in films:
        if pixels is not None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(root / name)
        rows.append(",".join(map(str, [name, *cells])))
    path = root / manifest
    path.write_text("\n".join(rows) + "\n")
    return path


def _dotted_film(rng: np.random.Generator, size: int, dots: int) -> np.ndarray:
    """A grey noise film with ``dots`` bright 4x4 squares (the toy cohorts' finding)."""
    film = rng.normal(90, 12, (size, size))
    for _ in range(dots):
        r, c = rng.integers(2, size - 2, 2)
        film[r - 2:r + 2, c - 2:c + 2] += 120
    return film


def make_toy_manifest(root: Path, n_patients: int = 20, films_per_patient: int = 1, size: int = 48,
                      positive_every: int = 2, seed: int = 0) -> Path:
    """Write a toy cohort of PNG films (positives carry bright dots) and its manifest; returns the manifest.
    Tests that only read a cohort take it from the session's ``toy_cohort`` fixture (conftest.py)."""
    rng = np.random.default_rng(seed)

    def films():
        for p in range(n_patients):
            label = int(p % positive_every == 0)
            for k in range(films_per_patient):
                film = _dotted_film(rng, size, 6 if label else 0)
                yield f"films/p{p:03d}_{k}.png", film, (f"P{p:03d}", "pneumoconiosis" if label else "normal")

    return write_cohort(root, films())


def make_noisy_manifest(root: Path, n_patients: int = 45, size: int = 40, flip_every: int = 4,
                        faulty: bool = False, seed: int = 0) -> Path:
    """A toy cohort like ``make_toy_manifest``'s (one film per patient) whose labels are wrong for every
    ``flip_every``-th pair of patients (one of each class), so validation films do not separate the classes; a
    ``site`` column (A for the first half of the patients, B for the others) and, with ``faulty``, a missing film
    and a 10-pixel one (too small)."""
    rng = np.random.default_rng(seed)
    films = []
    for p in range(n_patients):
        label = int(p % 2 == 0)
        shown = 1 - label if (p // 2) % flip_every == 0 else label
        films.append((f"films/p{p:03d}.png", _dotted_film(rng, size, 6 if label else 0),
                      (f"P{p:03d}", "pneumoconiosis" if shown else "normal", "A" if p < n_patients // 2 else "B")))
    if faulty:
        films += [("films/missing.png", None, ("P900", "normal", "A")),
                  ("films/tiny.png", rng.normal(90, 12, (10, 10)), ("P901", "pneumoconiosis", "B"))]
    return write_cohort(root, films, header=("path", "patient_id", "label", "site"))


def compose_train(overrides: list[str], run_dir: Path, config_name: str = "train",
                  config_dir: Path | None = None):
    """Compose the training config like the Hydra app does (hydra node included), run dir under ``run_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from pneumollm.config import register_resolvers
    from pneumollm.paths import conf_dir

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir or conf_dir())):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
        del cfg["hydra"]  # the app's task function never sees the hydra node
    return cfg


class CrashAtEpoch:
    """A Lightning callback that raises when epoch ``epoch`` starts (simulates an interrupted run)."""

    def __new__(cls, epoch: int):
        import lightning as L

        class _Crash(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module) -> None:
                if trainer.current_epoch == epoch:
                    raise RuntimeError(f"simulated interruption at epoch {epoch}")

        return _Crash()


@contextlib.contextmanager
def crash_at_epoch(epoch: int):
    """Within the block, fold runs get an extra callback that raises when ``epoch`` starts (an interrupted run).

    Injected around the config rather than through it, so the interrupted run has the same config hash as
    the rerun that resumes it.
    """
    from pneumollm.training import run

    original = run.instantiate_callbacks

    def with_crash(node):
        callbacks = original(node)
        if node is not None and "checkpoint" in node:
            callbacks["crash"] = CrashAtEpoch(epoch)
        return callbacks

    run.instantiate_callbacks = with_crash
    try:
        yield
    finally:
        run.instantiate_callbacks = original


class SlowEpochs:
    """A Lightning callback that sleeps ``seconds`` at the start of every epoch and, from epoch ``hold_from`` on,
    waits while the file ``hold`` exists: a test interrupts the run there, at a known point, however loaded the
    machine is, then deletes the file so that the rerun (the same command) goes through."""

    def __new__(cls, seconds: float, hold: str | None = None, hold_from: int = 2):
        import time
        from pathlib import Path

        import lightning as L

        class _Slow(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module) -> None:
                time.sleep(seconds)
                deadline = time.time() + 300
                while (hold is not None and trainer.current_epoch >= hold_from and Path(hold).exists()
                       and time.time() < deadline):
                    time.sleep(0.05)

        return _Slow()


def build_model_config(name: str, size: str = "tiny"):
    """Instantiate ``conf/model/<size>_<name>.yaml`` (an arm's net at that size; ``<name>.yaml`` for an unsized
    net such as timm_resnet18), as the training app does."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pneumollm.config import register_resolvers
    from pneumollm.paths import conf_dir

    register_resolvers()
    path = conf_dir() / "model" / f"{size}_{name}.yaml"
    path = path if path.is_file() else path.with_name(f"{name}.yaml")
    cfg = OmegaConf.create({"model": OmegaConf.load(path)})
    return instantiate(cfg.model, _convert_="object")


def wandb_records(path: Path):
    """The records of an offline W&B run file (``run-<id>.wandb``), for tests that read a run back.

    The file is W&B's LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks (4-byte checksum,
    2-byte length, 1-byte type: full, first, middle, last) holding serialised ``wandb_internal_pb2.Record``s.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, block, buffer = Path(path).read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 or pos + 7 + length > len(data):  # padding, or a record still being written
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buffer = chunk if kind in (1, 2) else buffer + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buffer)
            yield record


def wandb_run_contents(run_dir: Path, wait: float = 30.0) -> tuple[str, dict, dict]:
    """(run id, config, summary) written into one offline run folder (values decoded from JSON).

    W&B's own process writes the file; this waits (up to ``wait`` seconds) until the run's exit record is in it.
    """
    import json
    import time

    (path,) = Path(run_dir).glob("run-*.wandb")
    deadline = time.monotonic() + wait
    records = list(wandb_records(path))
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
        time.sleep(0.2)
        records = list(wandb_records(path))
    run_id, config, summary = "", {}, {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "summary":
            summary.update({i.key: json.loads(i.value_json) for i in record.summary.update if i.key})
    return run_id, config, summary


def markdown_rows(text: str, table: int | None = None) -> list[list[str]]:
    """The cells of every row of the pipe tables in ``text`` (header rows included, separator rows left out);
    ``table``: of that table only (0: the first; tables are separated by lines that are not table rows)."""
    rows, index, inside = [], -1, False
    for line in text.splitlines():
        if not line.startswith("|"):
            inside = False
            continue
        if not inside:
            index, inside = index + 1, True
        if not set(line) <= set("|:- ") and (table is None or index == table):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def make_staged_manifest(root: Path, patients_per_stage: int = 4, size: int = 40, seed: int = 0,
                         findings: bool = True) -> Path:
    """A toy cohort of PNG films whose ILO stage (0-3, written as 0/I/II/III) sets how many bright dots a film
    carries, with two co-finding columns (``tb`` on every other patient, ``emphysema`` on every third) and a
    ``pneumoconiosis`` 0/1 column; returns the manifest (``path,patient_id,label,...``)."""
    rng = np.random.default_rng(seed)
    header = ["path", "patient_id", "label", *(["pneumoconiosis", "tb", "emphysema"] if findings else [])]
    roman = ["0", "I", "II", "III"]

    def films():
        for p in range(4 * patients_per_stage):
            stage = p % 4
            film = _dotted_film(rng, size, 5 * stage)
            extra = [int(stage >= 1), int(p % 2 == 0), int(p % 3 == 0)] if findings else []
            yield f"films/p{p:03d}.png", film, (f"P{p:03d}", roman[stage], *extra)

    return write_cohort(root, films(), header)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a console script run as a subprocess: offline, and this checkout's package (``src``)
    and tests first on the path, whichever checkout the virtualenv's editable install points at."""
    from pneumollm.paths import PACKAGE_DIR, REPO_ROOT

    path = os.pathsep.join([str(PACKAGE_DIR.parent), str(REPO_ROOT)])
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": path, **extra}
