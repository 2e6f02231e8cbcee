"""The words outputs use for what a study is: its size (the tiny CPU stand-ins or a real model) and its two
classes (``data.class_names``: pneumoconiosis against normal by default, a user's own cohort's words otherwise)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pneumollm.data.targets import BINARY_CLASSES

TINY = "tiny"


def size_words(sizes: Iterable[str | None]) -> str:
    """A title's size part: ``size=tiny (CPU stand-ins)`` for the tiny arms (randomly initialised, reduced models
    that check the pipeline), ``size=full`` for the paper's, ``size=?`` when the runs did not record it."""
    known = sorted({str(s) for s in sizes if s not in (None, "", "?")})
    if not known:
        return "size=?"
    text = "size=" + "/".join(known)
    if known == [TINY]:
        return f"{text} (CPU stand-ins)"
    return f"{text} (tiny: CPU stand-ins)" if TINY in known else text


def class_words(class_names: Sequence[str] = BINARY_CLASSES) -> str:
    """``<label 1> vs <label 0>``, e.g. ``pneumoconiosis vs normal``."""
    return f"{class_names[1]} vs {class_names[0]}"


def probability_name(class_names: Sequence[str] = BINARY_CLASSES) -> str:
    """What ``prob`` is, e.g. ``P(pneumoconiosis)``."""
    return f"P({class_names[1]})"


def common_class_names(names: Iterable[Sequence[str]]) -> tuple[str, str]:
    """The class names of several arms: theirs when they agree, else the defaults (a study mixing names is rare)."""
    distinct = {tuple(n) for n in names}
    return distinct.pop() if len(distinct) == 1 else BINARY_CLASSES  # type: ignore[return-value]
