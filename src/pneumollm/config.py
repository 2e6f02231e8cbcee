"""OmegaConf resolvers used by the configs, registered once before composing."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from omegaconf import OmegaConf


def data_slug(path: str) -> str:
    """A readable, unique folder name for a cohort file: its stem plus a hash of its absolute path."""
    resolved = Path(str(path)).expanduser().resolve()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", resolved.stem)[:40] or "cohort"
    return f"{stem}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def register_resolvers() -> None:
    """Register the suite's resolvers (idempotent)."""
    if not OmegaConf.has_resolver("data_slug"):
        OmegaConf.register_new_resolver("data_slug", data_slug)


register_resolvers()
