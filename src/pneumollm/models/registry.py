"""The comparison arms by name, after timm's ``register_model``: ``@register_arm`` on an arm's factory or class.

A comparison arm is a row of the paper's tables that is a network of its own (the PneumoLLM rows are
compositions of its parts, ``conf/arm/``). Registering it declares what only its code knows: how its
full size is built without downloads (``family``) and the overrides that rebuild the published form whose
size the paper's L-para column counts (``published``). What the paper says about a row, its name and its
L-para, is read from the one copy of the paper's tables, ``analysis/data/paper_results.csv``
(``paper_row``): the same file the results tables print the paper's numbers from. Rows beyond the paper
(the backbone comparison, ``models/backbone_rows.py``) have no paper numbers; their labels and order come from
there (``arm_label``, ``row_names``).
"""

from __future__ import annotations

import csv
import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pneumollm.models.backbone_rows import BACKBONE_ROWS
from pneumollm.paths import paper_results_file

# How an arm's full size is built on the meta device: from its config alone (image), around a CLIP
# ViT-L/14 built from its config (clip), or with random towers and a tiny tokenizer (llm: a 7B LLM).
FAMILIES = ("image", "clip", "llm")

Builder = TypeVar("Builder", bound=Callable[..., Any])


@dataclass(frozen=True)
class ArmEntry:
    """One registered arm: its name (the ``arm=`` choice and ``conf/model/<size>/<name>.yaml``), its builder."""

    name: str
    build: Callable[..., Any]
    family: str = "image"
    published: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PaperRow:
    """What the paper says about a row: its name in the tables and its L-para (millions; None for "-")."""

    name: str
    params_m: float | None


_ARMS: dict[str, ArmEntry] = {}


def register_arm(name: str | None = None, *, family: str = "image",
                 published: Mapping[str, Any] | None = None) -> Callable[[Builder], Builder]:
    """Register the decorated factory or class as the arm ``name`` (default: the function's name)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown arm family {family!r}; choose one of {FAMILIES}")

    def decorate(build: Builder) -> Builder:
        arm = name or build.__name__
        known = _ARMS.get(arm)
        if known is not None and known.build.__qualname__ != build.__qualname__:
            raise ValueError(f"arm {arm!r} is registered twice ({known.build.__qualname__}, {build.__qualname__})")
        _ARMS[arm] = ArmEntry(arm, build, family, dict(published or {}))
        return build

    return decorate


@functools.cache
def _discover() -> None:
    """Import every module of ``pneumollm.models.arms`` so that their decorators run."""
    import pneumollm.models.arms as arms

    for module in pkgutil.iter_modules(arms.__path__):
        importlib.import_module(f"{arms.__name__}.{module.name}")


def arm_names() -> list[str]:
    """Every registered arm: the paper's row order first, then the others by name."""
    _discover()
    order = {arm: i for i, arm in enumerate(paper_rows())}
    return sorted(_ARMS, key=lambda arm: (order.get(arm, len(order)), arm))


def arm_entry(name: str) -> ArmEntry:
    """The registered arm ``name``; KeyError naming the registered ones otherwise."""
    _discover()
    if name not in _ARMS:
        raise KeyError(f"no registered arm {name!r}; registered: {', '.join(arm_names())}")
    return _ARMS[name]


def is_arm(name: str) -> bool:
    """Whether ``name`` is a registered comparison arm (not a PneumoLLM row)."""
    _discover()
    return name in _ARMS


@functools.cache
def paper_rows() -> dict[str, PaperRow]:
    """Every row id of the paper's tables -> its name and L-para where the paper first lists it (the L-para:
    the first table that gives one; e.g. PneumoLLM is "+Adapter+CMTE+Emitter" without L-para in Table 6)."""
    rows: dict[str, PaperRow] = {}
    with paper_results_file().open(newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            params = float(record["trainable_params_M"]) if record["trainable_params_M"].strip() else None
            known = rows.get(record["arm"])
            if known is None:
                rows[record["arm"]] = PaperRow(record["paper_row"], params)
            elif known.params_m is None and params is not None:
                rows[record["arm"]] = PaperRow(known.name, params)
    return rows


def paper_row(arm: str) -> PaperRow | None:
    """The paper's name and L-para of the row ``arm``; None for a row the paper's tables lack (Fig. 6 rows)."""
    return paper_rows().get(arm)


def row_names() -> list[str]:
    """Every named row: the paper's rows in the order its tables first list them, then the rows beyond the paper
    (the backbone comparison) in their table's order."""
    return [*paper_rows(), *(arm for arm in BACKBONE_ROWS if arm not in paper_rows())]


def arm_label(arm: str) -> str:
    """The label a results table shows for ``arm``: its name in the paper, else its label as a row beyond the
    paper (``backbone_rows``), else the arm id itself."""
    row = paper_row(str(arm))
    if row is not None:
        return row.name
    beyond = BACKBONE_ROWS.get(str(arm))
    return beyond.label if beyond is not None else str(arm)
