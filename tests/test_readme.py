"""The README's "Use ex2 from Python" snippet runs as written, on a tiny random-init Llama."""

from __future__ import annotations

import re
from pathlib import Path

from test_train import tiny_llm  # noqa: F401  (module fixture)

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippet(section: str) -> str:
    text = README.read_text()
    start = text.index(f"## {section}")
    found = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert found, f"README.md: no python block under '## {section}'"
    return found.group(1)


def test_use_ex2_from_python_snippet_runs(tiny_llm, shared_cache, tmp_path, monkeypatch, capsys):  # noqa: F811
    code = python_snippet("Use ex2 from Python")
    model_line = 'MODEL = ex2.resolve_llm("smollm2")'
    assert model_line in code
    code = code.replace(model_line, f"MODEL = {str(tiny_llm)!r}")  # the one change: a tiny model
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "python" / "classify" / "metrics.json").is_file()
    assert list((tmp_path / "runs" / "python" / "train").glob("checkpoint-2"))
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("[('ex2', ") and 0.0 <= float(printed[-2]) <= 1.0
    rewards = [line for line in printed if re.fullmatch(r"\[-?[\d.e+-]+\]", line)]
    assert len(rewards) == 1  # one reward for the one completion
