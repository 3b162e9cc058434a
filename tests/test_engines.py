"""``ex2 env`` and the engines' up-front checks: what runs here, and one line saying how to get what does not."""

from __future__ import annotations

import pytest
import torch

from ex2 import env
from ex2.cli import main


def test_env_prints_versions_and_every_engine(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"- torch: {env.version('torch')}" in out and "- transformers: " in out
    for name in ("CUDA", "bf16", "bitsandbytes", "vLLM", "trl + vLLM", "DeepSpeed", "TensorBoard"):
        assert f"- {name}" in out, name
    assert "Engines usable here:" in out


def test_env_gives_the_install_line_of_what_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(env, "version", lambda package: None if package != "torch" else torch.__version__)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "- bitsandbytes (--quantization 4bit|8bit): no (not installed)  ->  pip install 'ex2[quant]'" in out
    assert "vLLM (--sampler vllm, --gen-backend vllm): no (not installed)  ->  vLLM's CPU build" in out
    assert "make vllm-venv" in out  # a CPU machine is pointed at the CPU build, not the CUDA wheel
    assert "DeepSpeed (ex2 finetune ZeRO-2/3): no (not installed)  ->  pip install 'ex2[deepspeed]'" in out
    assert "- CUDA: no" in out


def test_env_judges_versions():
    assert env.release("0.50.2") == (0, 50) and env.release("2.13.0+cpu") == (2, 13) and env.release(None) == (0, 0)
    assert env.release("0.31.0rc1") == (0, 31)


def test_env_says_bitsandbytes_runs_on_a_cpu_from_049(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for found, usable in (("0.48.1", False), ("0.50.2", True)):
        monkeypatch.setattr(env, "version", lambda package, found=found: found if package == "bitsandbytes" else None)
        bnb = next(e for e in env.engines() if e.name.startswith("bitsandbytes"))
        assert bnb.usable is usable


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_use_vllm_on_a_cpu_is_refused_before_anything_loads(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--llm", str(tmp_path / "no-such-llm"), "--vlm", str(tmp_path / "no-such-vlm"),
            "--use-vllm", "--output", str(run)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--use-vllm needs a CUDA GPU" in err and "--sampler vllm" in err
    assert not run.exists()
