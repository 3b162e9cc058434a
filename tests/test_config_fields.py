"""No stage config declares a field twice: a dataclass keeps the last declaration without a word, so
a repeated name silently takes the other meaning (``--classnames`` once meant two files)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ex2"


def dataclass_bodies(path: Path) -> list[tuple[str, list[str]]]:
    """``(class name, field names in declaration order)`` of each dataclass in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
            names = [s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
            found.append((node.name, names))
    return found


def repeated(names: list[str]) -> list[str]:
    return sorted(name for name, count in Counter(names).items() if count > 1)


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PACKAGE)) for p in FILES])
def test_no_dataclass_declares_a_field_twice(path):
    twice = {name: repeated(fields) for name, fields in dataclass_bodies(path) if repeated(fields)}
    assert not twice, f"{path}: fields declared twice (the last one silently wins): {twice}"


def test_every_stage_config_is_checked():
    configs = {name for path in FILES for name, _ in dataclass_bodies(path) if name.endswith("Config")}
    assert {"TrainConfig", "GenerateConfig", "InspectConfig", "ClassifyConfig", "ProbeConfig", "ReportConfig"} <= configs


def test_the_check_sees_a_repeated_field(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("@dataclass\nclass BadConfig:\n    names: str = 'a'\n    other: int = 1\n    names: str = 'b'\n")
    assert [(name, repeated(fields)) for name, fields in dataclass_bodies(bad)] == [("BadConfig", ["names"])]
