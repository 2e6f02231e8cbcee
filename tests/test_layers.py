"""The package's layers (docs/architecture.md): every import of one of the package's modules, imports inside
functions included, goes down ``data < models < training < analysis < inference < cli`` or stays in its layer,
no imports go round in a cycle, and every console script is a function in ``pneumollm.cli``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

import pneumollm
from pneumollm.paths import REPO_ROOT

PACKAGE_DIR = Path(pneumollm.__file__).resolve().parent
LAYERS = ("base", "data", "models", "training", "analysis", "inference", "cli")  # bottom to top
# Modules directly in the package: the shared helpers sit below every layer; config.py registers the resolvers
# the model YAMLs use and builds on data.targets and models.task_texts, so it belongs to the models layer.
TOP_LEVEL = {"pneumollm": "base", "pneumollm.errors": "base", "pneumollm.paths": "base", "pneumollm.utils": "base",
             "pneumollm.config": "models"}

# Known problems that other branches remove: an edge listed here is left out of both checks. The lead empties
# this set after merging them; test_the_known_edges_are_still_there fails once an edge is gone, to say so.
KNOWN_EDGES: set[tuple[str, str]] = set()  # edges to tolerate while a change is under way (none)


def module_files(package_dir: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its ``__init__.py``)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The package modules that module ``name`` imports anywhere in its file (module level, inside functions,
    under ``TYPE_CHECKING``), each with the line of its first import; the module's own packages left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def nearest(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str | None] = []
        if isinstance(node, ast.Import):
            targets = [nearest(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else nearest(base)
                       for alias in node.names]
        for target in targets:
            if target and target != name and not name.startswith(target + "."):
                found[target] = min(found.get(target, node.lineno), node.lineno)
    return found


def import_graph(package_dir: Path) -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    modules = module_files(package_dir)
    return modules, {name: imported_modules(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS[1:]:
        return parts[1]
    top = ".".join(parts[:2])
    if top not in TOP_LEVEL:
        raise AssertionError(f"{module} is in no layer: add {top!r} to TOP_LEVEL in tests/test_layers.py and to "
                             "docs/architecture.md")
    return TOP_LEVEL[top]


def upward_imports(graph: dict[str, dict[str, int]], modules: dict[str, Path], known=KNOWN_EDGES) -> list[str]:
    problems = []
    for source, targets in sorted(graph.items()):
        for target, line in sorted(targets.items()):
            if (source, target) in known:
                continue
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(source)):
                path = modules[source]
                shown = Path(*path.parts[len(path.parts) - path.parts[::-1].index("pneumollm") - 1:])
                problems.append(f"{shown}:{line}: {source} ({layer_of(source)}) imports {target} ({layer_of(target)})")
    return problems


def import_cycles(graph: dict[str, dict[str, int]], known=KNOWN_EDGES) -> list[list[str]]:
    """The groups of modules that import each other round in a cycle (Tarjan's strongly connected components)."""
    edges = {m: sorted(t for t in targets if (m, t) not in known) for m, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in edges[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return cycles


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    return import_graph(PACKAGE_DIR)


def test_every_import_goes_down_the_layers(graph) -> None:
    modules, edges = graph
    problems = upward_imports(edges, modules)
    assert not problems, "imports up the layers:\n" + "\n".join(problems)


def test_no_imports_go_round_in_a_cycle(graph) -> None:
    _, edges = graph
    cycles = import_cycles(edges)
    assert not cycles, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_known_edges_are_still_there(graph) -> None:
    _, edges = graph
    gone = sorted((a, b) for a, b in KNOWN_EDGES if b not in edges.get(a, {}))
    assert gone == [], f"fixed: remove {gone} from KNOWN_EDGES in tests/test_layers.py"


def test_the_checks_see_imports_inside_functions_relative_ones_and_cycles(tmp_path: Path) -> None:
    package = tmp_path / "pneumollm"
    sources = {
        "__init__.py": "",
        "errors.py": "",
        "data/__init__.py": "",
        "data/films.py": "def read():\n    from ..models.base import Model  # hidden in a function\n",
        "models/__init__.py": "",
        "models/base.py": "from pneumollm.data import films\nfrom . import head\n",
        "models/head.py": "def build():\n    import pneumollm.models.base\n",
        "training/__init__.py": "from pneumollm.errors import UserError\n",
    }
    for name, text in sources.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    modules, edges = import_graph(package)
    assert edges["pneumollm.data.films"] == {"pneumollm.models.base": 2}
    assert edges["pneumollm.models.base"] == {"pneumollm.data.films": 1, "pneumollm.models.head": 2}
    assert edges["pneumollm.training"] == {"pneumollm.errors": 1}
    (problem,) = upward_imports(edges, modules, known=set())
    assert problem.startswith("pneumollm/data/films.py:2: pneumollm.data.films (data) imports pneumollm.models.base")
    assert import_cycles(edges, known=set()) == [["pneumollm.data.films", "pneumollm.models.base",
                                                  "pneumollm.models.head"]]
    assert import_cycles(edges, known={("pneumollm.data.films", "pneumollm.models.base")}) == [
        ["pneumollm.models.base", "pneumollm.models.head"]]
    assert upward_imports(edges, modules, known={("pneumollm.data.films", "pneumollm.models.base")}) == []


def test_every_console_script_is_a_main_in_cli() -> None:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"pneumollm-param-count", "pneumollm-arm-param-count", "pneumollm-build-memory", "pneumollm-eval-lungs",
            "pneumollm-wandb-sync", "pneumollm-aggregate", "pneumollm-compare"} <= set(scripts)
    modules = module_files(PACKAGE_DIR)
    for script, target in scripts.items():
        module, _, function = target.partition(":")
        assert module.startswith("pneumollm.cli.") and function == "main", f"{script} = {target}"
        tree = ast.parse(modules[module].read_text(encoding="utf-8"))  # read, not imported: no torch to load
        assert "main" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, f"{script} = {target}"


def test_only_cli_modules_run_as_scripts() -> None:
    runnable = sorted(name for name, path in module_files(PACKAGE_DIR).items()
                      if '__name__ == "__main__"' in path.read_text(encoding="utf-8")
                      and not name.startswith("pneumollm.cli."))
    assert runnable == [], "python -m entry points belong in pneumollm.cli"
