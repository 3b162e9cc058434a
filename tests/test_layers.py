"""ex2's modules import only downward (core → data → vlm/llm → reward → train/generate → inspect →
classify → report → cli), and no two modules import each other, directly or round a circle,
whether at the top of a file or inside a function (the graph and the rule of thumb are in
CONTRIBUTING.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ex2"

# lowest layer first; a module may import its own layer and those before it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("ex2", "ex2.core", "ex2.resources")),
    ("data", ("ex2.data",)),
    ("models", ("ex2.vlm", "ex2.llm", "ex2.gvlm")),
    ("reward", ("ex2.reward",)),
    ("align", ("ex2.train", "ex2.generate", "ex2.knowledge")),
    ("inspect", ("ex2.inspect",)),
    ("classify", ("ex2.classify", "ex2.probe", "ex2.annotate", "ex2.finetune")),
    ("report", ("ex2.report",)),
    ("app", ("ex2.demo", "ex2.cli")),
]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {module_name(path): path for path in FILES}


def layer_of(module: str) -> int:
    """The layer of ``module``: the longest listed prefix that names it or a package above it."""
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            below = prefix != "ex2" and module.startswith(prefix + ".")  # the package ex2 is its __init__ only
            if (module == prefix or below) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py; add it where it belongs")
    return rank


def imported(module: str, names: list[str], known: set[str]) -> set[str]:
    """What ``from module import names`` loads: each name that is a module of its own, else ``module``."""
    found = {f"{module}.{name}" for name in names if f"{module}.{name}" in known}
    if len(found) < len(names):
        found.add(module)
    return found


def imports_of(path: Path, known: set[str] | None = None, package: Path = PACKAGE) -> set[str]:
    """The ex2 modules a file imports, at the top or inside functions (``from ex2.x import y`` is
    ``ex2.x.y`` when ``y`` is a module, else ``ex2.x``); relative imports are resolved too."""
    known = set(MODULES) if known is None else known
    here = module_name(path, package) if path.is_relative_to(package) else ""
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            if base.split(".")[0] == "ex2":
                found |= imported(base, [alias.name for alias in node.names], known)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "ex2"}
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the ex2 modules it imports (only those that exist in ``modules``)."""
    known = set(modules)
    return {name: {m for m in imports_of(path, known) if m in known and m != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), sorted:
    every module of one can reach every other, so each lies on an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def circle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest circle through the first module of ``component`` (breadth-first, inside it)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no circle through {start}")  # unreachable for a strongly connected component


@pytest.mark.parametrize("path", FILES, ids=[module_name(p) for p in FILES])
def test_modules_import_only_downward(path):
    here = module_name(path)
    upward = sorted(m for m in imports_of(path) if layer_of(m) > layer_of(here))
    assert not upward, (
        f"{here} ({LAYERS[layer_of(here)][0]}) imports {', '.join(upward)} from a higher layer; "
        "move the shared piece down (see CONTRIBUTING.md)")


def test_no_import_cycles():
    graph = import_graph(MODULES)
    found = [f"{' -> '.join(circle_in(graph, set(c)))}   (circle among {', '.join(c)})" for c in cycles(graph)]
    assert not found, ("import circles; move the shared piece one floor down (see CONTRIBUTING.md):\n"
                       + "\n".join(found))


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ex2 import report\n")
    assert imports_of(bad) == {"ex2.report"}
    assert layer_of("ex2.report.stage") > layer_of("ex2.data.dataset")


def test_the_checker_sees_a_cycle_through_a_function_import(tmp_path):
    package = tmp_path / "ex2"
    (package / "a").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a" / "__init__.py").write_text("")
    (package / "a" / "one.py").write_text("from ex2.a.two import helper\n")
    (package / "a" / "two.py").write_text("def helper():\n    from ex2.a import three\n")
    (package / "a" / "three.py").write_text("def run():\n    from .one import x\n")
    modules = {module_name(path, package): path for path in package.rglob("*.py")}
    graph = {name: {m for m in imports_of(path, set(modules), package) if m != name}
             for name, path in modules.items()}
    assert cycles(graph) == [["ex2.a.one", "ex2.a.three", "ex2.a.two"]]
    assert circle_in(graph, {"ex2.a.one", "ex2.a.three", "ex2.a.two"}) == [
        "ex2.a.one", "ex2.a.two", "ex2.a.three", "ex2.a.one"]
    graph["ex2.a.three"] = set()
    assert cycles(graph) == []
