"""Test-wide settings (no hub, no W&B network) and fixtures shared by the test modules."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# the suite's own cache (full-size parameter counts) in a folder of the test session, not the user's ~/.cache
os.environ.setdefault("PNEUMOLLM_CACHE", tempfile.mkdtemp(prefix="pneumollm-cache-"))


import pytest
import torch

import pneumollm.config  # noqa: F401  (registers the configs' resolvers, as every console script does)
from tests.helpers import make_staged_manifest, make_toy_manifest


@pytest.fixture(scope="module")
def tiny_cache_one_thread(tmp_path_factory: pytest.TempPathFactory):
    """The tiny CLIP/Llama stand-ins cached in a fresh folder per module, torch on one thread meanwhile
    (tiny matmuls on the shared 2-core machine run far faster without thread contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNEUMOLLM_TINY_DIR", str(tmp_path_factory.mktemp("tiny")))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy_cohort(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """The toy cohorts of ``tests.helpers``, each written once per session: ``toy_cohort(n_patients=18, size=40)``
    is ``make_toy_manifest``'s manifest with those arguments, ``toy_cohort(staged=True, ...)``
    ``make_staged_manifest``'s. Shared between modules, so a test only reads it (copy it to change it)."""
    made: dict[tuple, Path] = {}

    def cohort(staged: bool = False, **arguments: object) -> Path:
        key = (staged, *sorted(arguments.items()))
        if key not in made:
            make = make_staged_manifest if staged else make_toy_manifest
            made[key] = make(tmp_path_factory.mktemp("staged" if staged else "toy"), **arguments)
        return made[key]

    return cohort
