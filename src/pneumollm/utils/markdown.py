"""Markdown tables through pandas (``DataFrame.to_markdown``, which uses tabulate)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]],
                   align: str | Sequence[str] | None = None) -> str:
    """A GitHub-style pipe table of ``rows`` under ``header``, the cells as given (no number re-formatting).

    ``align``: "left" or "right" for every column, one of them per column, or None (left, tabulate's default
    for text).
    """
    import pandas as pd

    frame = pd.DataFrame([[str(c) for c in row] for row in rows], columns=[str(h) for h in header])
    options: dict[str, object] = {"index": False, "tablefmt": "pipe", "disable_numparse": True}
    if align is not None:
        options["colalign"] = [align] * len(header) if isinstance(align, str) else list(align)
    return frame.to_markdown(**options)
