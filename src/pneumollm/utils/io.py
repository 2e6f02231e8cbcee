"""Atomic file writes (write to a temporary file, then rename), sets of outputs replaced together, hashing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def current_umask() -> int:
    """The process's file-mode creation mask (read once: reading it means setting it, which is not thread-safe)."""
    try:  # Linux states it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then move the result onto ``path``, so readers never see a partial file.

    The file gets the mode a plain ``open()`` would give it (0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes owner-only files; results are for the group
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def png_bytes(array: Any) -> bytes:
    """A 2-D uint8 array (or an RGB one) encoded as PNG."""
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(data: Any) -> str:
    """Hex SHA-256 of the canonical JSON form of ``data``."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()


MANIFEST_NAME = ".outputs.json"


def read_output_set(folder: str | Path, name: str = "outputs") -> tuple[list[str], Any]:
    """The members of the set ``name`` in ``folder`` and the ``meta`` stored with it (([], None) if none)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return [], None
    return list(manifest.get(name, [])), manifest.get(f"{name}:meta")


@contextmanager
def output_set(folder: str | Path, name: str = "outputs", meta: dict[str, Any] | None = None) -> Iterator[Path]:
    """Write a set of files that replace the previous set together, never half old and half new.

    Yields a staging folder inside ``folder``; files written there are moved into ``folder`` only when the
    block ends without an error (an error leaves the previous set untouched). Files of the previous set that
    the new one does not contain are removed, so a figure that is no longer made does not linger. The set's
    members are listed in ``folder/.outputs.json`` under ``name``, with ``meta`` (a JSON-able dict the block may
    still fill in) under ``name:meta``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=folder))
    try:
        yield staging
        members = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        manifest_path = folder / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            manifest = {}
        for member in members:
            target = folder / member
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / member, target)
        for old in set(manifest.get(name, [])) - set(members):
            (folder / old).unlink(missing_ok=True)
        manifest[name] = members
        manifest[f"{name}:meta"] = meta
        atomic_write_json(manifest_path, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_folder(path: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes ``path`` when the block ends without an error.

    An error removes the temporary folder and leaves ``path`` as it was. ``path`` may exist only when empty,
    unless ``replace`` (then the old folder is moved aside, the new one renamed in, and the old one deleted).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes an owner-only folder
        if path.exists() and (replace or not any(path.iterdir())):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)  # fails (never merges) when path appeared meanwhile and is not empty
    finally:
        shutil.rmtree(staging, ignore_errors=True)
