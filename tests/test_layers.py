"""ex2's modules import only downward: core → data → vlm/llm → reward → train/generate → inspect →
classify → report → cli (the graph and the rule of thumb are in CONTRIBUTING.md)."""

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
    ("app", ("ex2.demo", "ex2.cli", "ex2.env")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


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


def imports_of(path: Path) -> set[str]:
    """The ex2 modules a file imports, at the top or inside functions (``from ex2 import x`` is ex2.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ex2":
            if node.module == "ex2":
                found |= {f"ex2.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "ex2"}
    return found


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[module_name(p) for p in FILES])
def test_modules_import_only_downward(path):
    here = module_name(path)
    upward = sorted(m for m in imports_of(path) if layer_of(m) > layer_of(here))
    assert not upward, (
        f"{here} ({LAYERS[layer_of(here)][0]}) imports {', '.join(upward)} from a higher layer; "
        "move the shared piece down (see CONTRIBUTING.md)")


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ex2 import report\n")
    assert imports_of(bad) == {"ex2.report"}
    assert layer_of("ex2.report.stage") > layer_of("ex2.data.dataset")
