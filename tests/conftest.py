"""Test-wide settings: no hub, no W&B network."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# the suite's own cache (full-size parameter counts) in a folder of the test session, not the user's ~/.cache
os.environ.setdefault("PNEUMOLLM_CACHE", tempfile.mkdtemp(prefix="pneumollm-cache-"))


import pytest
import torch

import pneumollm.config  # noqa: F401  (registers the configs' resolvers, as every console script does)


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
