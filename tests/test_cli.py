from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ex2.cli import STAGES, main


def test_usage_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in [*STAGES, "ls"]:
        assert command in out


def test_unknown_command_exits_2(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_ls_lists_models_datasets_templates(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in ("conse", "smollm2", "samples", "pets", "imagefolder", "ex2"):
        assert name in out


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_has_help(stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([stage, "--help"])
    assert exit_info.value.code == 0
    assert f"ex2 {stage}" in capsys.readouterr().out


ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env})
    return result.stdout.strip()


def test_console_script_runs_offline():
    code = "import os; from ex2.cli import main; main(['ls']); print(os.environ.get('HF_HUB_OFFLINE'))"
    assert _python(code).splitlines()[-1] == "1"
    assert _python(code, EX2_ALLOW_DOWNLOAD="1").splitlines()[-1] == "None"
    assert _python(code, HF_HUB_OFFLINE="0").splitlines()[-1] == "0"  # the user's own setting wins


def test_import_ex2_leaves_the_environment_alone_and_imports_nothing_heavy():
    code = ("import os, sys; before = dict(os.environ); import ex2; print(dict(os.environ) == before, "
            "sorted(m for m in ('torch', 'transformers', 'trl', 'ex2.reward.base') if m in sys.modules))")
    assert _python(code) == "True []"


def test_python_api_resolves_lazily_and_keeps_submodules_apart():
    import ex2

    assert "build_reward" in dir(ex2) and "run_classify" in ex2.__all__
    from ex2.reward.ex2 import EX2Reward
    from ex2.reward.registry import build_reward

    assert ex2.build_reward is build_reward and ex2.EX2Reward is EX2Reward
    assert callable(ex2.run_classify) and ex2.run_classify.__module__ == "ex2.classify.stage"
    from ex2.classify import stage as classify

    assert classify.run is ex2.run_classify  # the submodule is still the submodule
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        ex2.nothing_here  # noqa: B018
