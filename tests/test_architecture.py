"""The package's shape as tests: no import cycle, every arrow down the layers, small modules.

Every ``import`` of a shardfuzz module counts, at module level or inside a function (a lazy import is
still a dependency). The layers, bottom first (docs/architecture.md):

1. ``rank.portable`` (torch only: exported scripts copy it), ``case`` (plain data), ``verdict``;
2. ``capabilities`` (and its ``_fsdp2_probe``), ``unsupported`` (what the installed torch offers and documents as
   unsupported);
3. ``targets`` (the protocols a user implements, the registry, the default and shipped targets, faults);
4. ``rank`` (one case on one rank);
5. ``executor`` (ranks as processes);
6. ``findings`` (corpus, reports, replay, export);
7. ``search`` (campaigns), and ``strategies`` beside it (which import only layers 1-3);
8. ``commands``, ``cli``, ``pytest_plugin``, and ``fleet`` (campaigns across a Ray cluster, run as a command).

A module may import its own layer and those below, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"shardfuzz": ROOT / "fuzz", "shardfuzz.strategies": ROOT / "strategies"}

LAYERS = [
    ("rank.portable", "case", "verdict"),
    ("capabilities", "_fsdp2_probe", "unsupported"),
    ("targets",),
    ("rank",),
    ("executor",),
    ("findings",),
    ("search", "strategies"),
    ("commands", "cli", "pytest_plugin", "__main__", "fleet"),
]
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """The shardfuzz modules ``module`` imports, anywhere in its text (``from package import submodule``
    counts as the submodule)."""
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "shardfuzz":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else _resolve(node.module))
        elif isinstance(node, ast.Import):
            found |= {_resolve(alias.name) for alias in node.names if alias.name.split(".")[0] == "shardfuzz"}
    return {name for name in found if name is not None and name != module}


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> int | None:
    """The layer of ``module`` (its longest matching prefix), or None for the root package."""
    name = module.removeprefix("shardfuzz").lstrip(".")
    if not name:
        return None
    best = None
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS and to docs/architecture.md"
    return best[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _without_root(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # The root package wires the layers together (it is the composition root); a module that imports it
    # for its path (``shardfuzz.__file__``) does not depend on what it wires.
    return {module: {other for other in imports if other != "shardfuzz"} for module, imports in graph.items()}


def test_there_is_no_import_cycle():
    assert _cycles(_without_root(GRAPH)) == []


def test_a_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_import_points_down_the_layers():
    upward = [
        f"{module} (layer {_layer(module)}) imports {other} (layer {_layer(other)})"
        for module, imports in _without_root(GRAPH).items()
        for other in sorted(imports)
        if _layer(module) is not None and _layer(other) is not None and _layer(other) > _layer(module)
    ]
    assert upward == []


@pytest.mark.parametrize("package", ["shardfuzz.case", "shardfuzz.rank.portable"])
def test_the_bottom_packages_import_only_themselves(package):
    """The data model imports nothing torch-side; the portable code, copied into exported scripts, nothing
    of shardfuzz but itself."""
    outside = {
        module: sorted(other for other in imports if not (other == package or other.startswith(package + ".")))
        for module, imports in GRAPH.items()
        if module == package or module.startswith(package + ".")
    }
    assert {module: others for module, others in outside.items() if others} == {}


def test_the_rank_side_never_imports_hypothesis_or_the_strategies():
    drawing = [
        module
        for module, path in MODULES.items()
        if _layer(module) is not None
        and _layer(module) <= _layer("shardfuzz.executor")
        and any(
            isinstance(node, (ast.Import, ast.ImportFrom))
            and any((getattr(node, "module", None) or alias.name).split(".")[0] == "hypothesis" for alias in node.names)
            for node in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert drawing == []


def test_modules_stay_small():
    large = {
        str(path.relative_to(ROOT)): n
        for path in MODULES.values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert large == {}


def test_the_readme_fits_a_screen_or_two():
    """Measured logs and long tables live in docs/; the README says what it is and how to start."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 260


def test_the_strategies_import_only_the_data_the_probes_and_what_targets_declare():
    """The code that draws a case never runs it: the strategies import the case, the capability probes and the
    targets' declarations (layers 1-3), never a rank, an executor or the search."""
    reaching = {
        module: sorted(
            other
            for other in imports
            if not other.startswith("shardfuzz.strategies") and _layer(other) > _layer("shardfuzz.targets")
        )
        for module, imports in GRAPH.items()
        if module.startswith("shardfuzz.strategies")
    }
    assert {module: others for module, others in reaching.items() if others} == {}
