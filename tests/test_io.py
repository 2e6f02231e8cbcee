"""Result files: atomic, readable by the group as the umask allows, and replaced as one set."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pneumollm.utils import io
from pneumollm.utils.io import atomic_folder, atomic_write_text, output_set


@pytest.mark.parametrize("mask", [0o002, 0o022, 0o077])
def test_atomic_writes_respect_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mask: int) -> None:
    monkeypatch.setattr(io, "current_umask", lambda: mask)
    path = atomic_write_text(tmp_path / "metrics.json", "{}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_the_umask_is_read_without_changing_it() -> None:
    io.current_umask.cache_clear()
    before = os.umask(0o027)
    try:
        assert io.current_umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(before)
        io.current_umask.cache_clear()


def test_an_output_set_replaces_the_previous_set_and_drops_files_it_no_longer_makes(tmp_path: Path) -> None:
    with output_set(tmp_path, "figures") as stage:
        atomic_write_text(stage / "roc.png", "old roc")
        atomic_write_text(stage / "curve.png", "old curve")
    with output_set(tmp_path, "figures") as stage:
        atomic_write_text(stage / "roc.png", "new roc")
    assert (tmp_path / "roc.png").read_text() == "new roc" and not (tmp_path / "curve.png").exists()
    with pytest.raises(ValueError), output_set(tmp_path, "figures") as stage:
        atomic_write_text(stage / "roc.png", "half")
        raise ValueError("interrupted")
    assert (tmp_path / "roc.png").read_text() == "new roc"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".outputs.json", "roc.png"]


def test_an_atomic_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "out") as stage:
        (stage / "a.txt").write_text("a")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(tmp_path / "out") as stage:
        (stage / "a.txt").write_text("a")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.txt"]
    with pytest.raises(OSError), atomic_folder(tmp_path / "out") as stage:  # never merged into a non-empty folder
        (stage / "b.txt").write_text("b")
    with atomic_folder(tmp_path / "out", replace=True) as stage:
        (stage / "b.txt").write_text("b")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b.txt"] and [p.name for p in tmp_path.iterdir()] == [
        "out"]
