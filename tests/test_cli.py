from __future__ import annotations

import subprocess
import sys

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


def test_console_script_runs_offline():
    result = subprocess.run(
        [sys.executable, "-c", "import os, ex2; print(os.environ['HF_HUB_OFFLINE'])"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.strip() == "1"
