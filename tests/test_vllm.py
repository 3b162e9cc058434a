"""vLLM for real, on its CPU build: ``ex2 generate --sampler vllm`` on the embedded SmolLM2, with and without
a LoRA adapter, resumed after a kill, seeded, in EX2's legacy JSON; and ``--gen-backend vllm``, which
needs torchvision beside vLLM, refused in the CPU venv that lacks it. They run in the vLLM venv (``make test-vllm``) and skip elsewhere.

Each ``ex2`` run is a subprocess in its own session, killed whole after it exits: vLLM's engine
processes outlive a parent killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ex2.core.io import read_jsonl
from ex2.generate.stage import partial_path

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SHARED_CACHE = Path(os.environ.get("EX2_TEST_CACHE", Path.home() / ".cache" / "ex2-test"))
CONCEPTS = 2  # samples' first two classes x describe25: 50 descriptions, 5 batches of 10


def ex2_env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(REPO), "EX2_CACHE": str(SHARED_CACHE), "HF_HUB_OFFLINE": "1"}


def run_python(args: list[str], log: Path, timeout: float = 600) -> tuple[int, str]:
    """Python with ``args`` in a session of its own, its output in ``log`` (never a pipe: vLLM's engine
    processes outlive a killed parent, holding a pipe open); the session is killed after. Returns the
    exit code and the log's tail."""
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=ex2_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the engine's processes, if any are left
            except ProcessLookupError:
                pass
            proc.wait()
    return code, log.read_text()[-3000:]


def run_ex2(*argv: str, log: Path) -> tuple[int, str]:
    return run_python(["-m", "ex2.cli", *argv], log)


def generate_argv(output: Path, *extra: str) -> list[str]:
    return ["generate", "--llm", "smollm2", "--dataset", "samples", "--limit-concepts", str(CONCEPTS),
            "--sampler", "vllm", "--max-new-tokens", "8", "--batch-size", "10", "--seed", "3",
            "--output", str(output), *extra]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """One complete vLLM run of the base model, with EX2's legacy JSON beside it."""
    out = tmp_path_factory.mktemp("vllm-base") / "base.jsonl"
    code, log = run_ex2(*generate_argv(out, "--legacy-json", str(out.with_suffix(".json"))),
                        log=out.with_suffix(".log"))
    assert code == 0, log
    return out


@pytest.fixture(scope="module")
def smollm2_adapter(tmp_path_factory) -> Path:
    """A LoRA adapter (rank 8, random non-zero B) on SmolLM2's attention, saved as PEFT saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ex2.llm.models import resolve_llm

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EX2_CACHE", str(SHARED_CACHE))
        model = AutoModelForCausalLM.from_pretrained(resolve_llm("smollm2"))
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    get_peft_model(model, lora).save_pretrained(folder)
    return folder


def test_vllm_generates_every_description_and_ex2s_legacy_json(base_run):
    records = read_jsonl(base_run)
    assert len(records) == CONCEPTS * 25 and {r["adapter"] for r in records} == {None}
    assert sum(bool(r["description"]) for r in records) > len(records) // 2  # SmolLM2 writes text
    legacy = json.loads(base_run.with_suffix(".json").read_text())
    assert [len(per_class) for per_class in legacy] == [25] * CONCEPTS  # EX2's list per class, raw texts
    assert [raw for per_class in legacy for raw in per_class] == [r["raw"] for r in records]


def test_same_seed_same_file_after_a_kill_and_a_resume(base_run, tmp_path):
    out = tmp_path / "killed.jsonl"
    script = (  # the run kills itself while sampling its third batch, as a crash would
        "import os, signal\n"
        "from ex2.cli import main\n"
        "from ex2.llm.samplers import VLLMSampler\n"
        "real, calls = VLLMSampler.generate, []\n"
        "def killer(self, ids, seeds):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, ids, seeds)\n"
        "VLLMSampler.generate = killer\n"
        f"main({generate_argv(out)!r})\n"
    )
    code, log = run_python(["-c", script], tmp_path / "killed.log")
    assert code == -signal.SIGKILL, log
    assert not out.exists() and len(read_jsonl(partial_path(out))) == 1 + 2 * 10  # settings + 2 batches
    code, log = run_ex2(*generate_argv(out), log=tmp_path / "resumed.log")
    assert code == 0, log
    assert read_jsonl(out) == read_jsonl(base_run)  # same seed, same file, however it was reached


def test_vllm_serves_the_adapter_per_request(base_run, smollm2_adapter, tmp_path):
    out = tmp_path / "lora.jsonl"
    code, log = run_ex2(*generate_argv(out, "--adapter", str(smollm2_adapter)), log=tmp_path / "lora.log")
    assert code == 0, log
    records, base = read_jsonl(out), read_jsonl(base_run)
    assert {r["adapter"] for r in records} == {str(smollm2_adapter)}
    assert [r["seed"] for r in records] == [r["seed"] for r in base]
    assert [r["raw"] for r in records] != [r["raw"] for r in base]  # the LoRA request changed the model


def test_gen_backend_vllm_without_torchvision_is_one_clear_line(tmp_path):
    """vLLM's CPU venv has no torchvision (PyPI's is a CUDA build), and vLLM's multimodal models need it
    (LLaVA's processors import it): refused before any image or model is read."""
    if __import__("importlib").util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed beside vLLM")
    out = tmp_path / "open"
    code, log = run_ex2("classify", "--vlm", "gen:org/model", "--method", "open", "--gen-backend", "vllm",
                        "--dataset", "samples", "--output", str(out), log=tmp_path / "open.log")
    assert code == 1 and log.strip().splitlines()[-1].startswith("ex2 classify: error: --gen-backend vllm needs "
                                                                    "torchvision"), log
    assert "--gen-backend transformers" in log and not (out / "answers.jsonl").exists()


def test_the_installed_vllm_takes_every_argument_we_pass(smollm2_adapter):
    import dataclasses
    import inspect

    import vllm

    from ex2.llm.samplers import SamplingSettings, vllm_engine_kwargs, vllm_sampling_kwargs

    engine = {f.name for f in dataclasses.fields(vllm.EngineArgs)} | set(inspect.signature(vllm.LLM).parameters)
    for device in ("cpu", "cuda"):
        assert set(vllm_engine_kwargs("/m", smollm2_adapter, seed=3, device=device)) <= engine
    assert set(vllm_sampling_kwargs(SamplingSettings(), 0, [2])) <= set(inspect.signature(vllm.SamplingParams).parameters)
