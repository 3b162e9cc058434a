"""benchmarks/gpu_check.py runs whole on a CPU with tiny models (so it cannot rot before a GPU
comes), keeps going when a part fails, and benchmarks/pack_gpu.sh builds a pack that travels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402


def _parts(report: dict) -> dict:
    return {(item, part): result for item, entry in report["items"].items() for part, result in entry["parts"].items()}


@pytest.mark.slow
def test_tiny_check_writes_every_item_with_figures(shared_cache, tmp_path):
    output = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--tiny", "--output", str(output)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(output.read_text())
    assert "random-initialised" in report["note"] and report["tiny"] is True
    assert list(report["items"]) == list(gpu_check.PLAN)
    parts = _parts(report)
    assert set(parts) == {(item, part) for item, names in gpu_check.PLAN.items() for part in names}
    assert all(r["status"] == "ok" for key, r in parts.items() if key != ("grpo", "4bit"))
    assert all(report["items"][item]["compared_with"] for item in gpu_check.PLAN)

    train = parts["grpo", "bf16"]
    assert train["optimizer_steps_per_s"] > 0 and train["generated_tokens_per_s"] > 0
    assert train["steps_timed"] == 1 and 0 < train["tokens_generated_timed"] <= 8 * 8
    assert 0 < train["lora_parameters"] < train["model_parameters"]
    assert {"generation", "reward", "backward", "optimizer"} <= set(train["seconds_per_step_by_part"])
    if not torch.cuda.is_available():
        assert parts["grpo", "4bit"]["status"] == "skipped" and train["peak_memory_gib"] is None

    clip = parts["classify", "vit_l_14"]
    assert clip["images"] == 32 and clip["images_per_s"] > 0 and clip["bare_encode_image_per_s"] > 0
    assert clip["ratio_to_bare"] == pytest.approx(clip["images_per_s"] / clip["bare_encode_image_per_s"])

    for objective in ("desc", "grain"):
        tuned = parts["finetune", objective]
        assert tuned["full"]["steps_per_s"] > 0 and tuned["lora"]["steps_per_s"] > 0
        assert tuned["lora_over_full_steps_per_s"] == pytest.approx(
            tuned["lora"]["steps_per_s"] / tuned["full"]["steps_per_s"])

    likelihood = parts["gvlm", "llava_7b"]
    assert likelihood["classes"] == 10 and likelihood["images"] == 10 and likelihood["prompt_tokens"] > 16
    assert likelihood["images_per_s"] > 0 and likelihood["full_forward_per_class_images_per_s"] > 0
    assert likelihood["max_score_difference_cached_vs_full"] < 1e-3  # fp32 on the CPU: the same scores

    tests = parts["cuda_tests", "pytest"]
    assert "tests/test_train.py" in tests["files"] and "tests.test_train::test_qlora_on_cuda[4bit]" in tests["tests"]
    assert sum(tests[k] for k in ("passed", "failure", "error", "skipped")) == len(tests["tests"]) >= 5
    if not torch.cuda.is_available():
        assert tests["skipped"] == len(tests["tests"])

    rows = gpu_check.table_rows(report)
    assert len(rows) == 7 and all(row.count("|") == 8 for row in rows)


def test_readme_table_has_the_checks_rows():
    readme = (BENCHMARKS.parent / "README.md").read_text()
    for row in gpu_check.table_rows({"items": {}, "device": ""}):
        item, measured, against = row.split(" | ")[:3]
        assert f"{item} | {measured} | {against} |" in readme, row


def test_a_part_over_its_budget_is_recorded_and_the_others_still_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_check, "TINY_BUDGET", 0.5)  # no part can even import torch in time
    output = tmp_path / "check.json"
    assert gpu_check.main(["--tiny", "--only", "classify", "cuda_tests", "--output", str(output)]) == 1
    report = json.loads(output.read_text())
    parts = _parts(report)
    assert set(parts) == {("classify", "vit_l_14"), ("cuda_tests", "pytest")}
    assert all(r["status"] == "timeout" and "budget" in r["error"] for r in parts.values())
    assert "2 part(s) without figures" in capsys.readouterr().out


def test_a_failing_part_keeps_its_error(tmp_path):
    ctx = gpu_check.Context(tiny=True, device="cpu", work=str(tmp_path))
    result = gpu_check.run_part("grpo", "no-such-mode", ctx, 120)
    assert result["status"] == "failed" and result["error"] and "Traceback" in result["traceback"]


def test_the_full_check_refuses_a_machine_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only refusal")
    with pytest.raises(SystemExit):
        gpu_check.main(["--output", str(tmp_path / "x.json")])
    assert "--tiny" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_pack_fits_and_installs_into_an_empty_target(shared_cache, tmp_path):
    pack = tmp_path / "pack"
    done = subprocess.run(["bash", str(BENCHMARKS / "pack_gpu.sh"), str(pack)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    size = sum(p.stat().st_size for p in pack.rglob("*") if p.is_file())
    assert size < 64 * 2**20
    install = done.stdout.strip().splitlines()[-1]
    assert install.startswith("python3 -m pip install") and "--target" in install and "PYTHONPATH=" in install

    wheels = {p.name.split("-")[0]: p for p in pack.glob("*.whl")}
    assert {"ex2", "trl", "open_clip_torch", "datasets", "bitsandbytes", "dill", "multiprocess"} <= set(wheels)
    libraries = [n for n in zipfile.ZipFile(wheels["bitsandbytes"]).namelist() if n.endswith(".so")]
    assert sorted(Path(n).name for n in libraries) == ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"]

    target = tmp_path / "site"
    platforms = [a for tag in ("manylinux_2_24_x86_64", "manylinux_2_17_x86_64") for a in ("--platform", tag)]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(target), "--python-version", "3.12", "--implementation", "cp",
                    "--only-binary=:all:", *platforms, *map(str, wheels.values())], check=True)
    for path in ("ex2/train/stage.py", "ex2/data/templates_describe25.txt", "trl/__init__.py",
                 "open_clip/model_configs/ViT-L-14.json", "datasets/__init__.py",
                 "bitsandbytes/libbitsandbytes_cuda130.so", "multiprocess/__init__.py"):
        assert (target / path).is_file(), path
    tokenizer = next((pack / "test-cache" / "models").iterdir())
    assert (tokenizer / "tokenizer.json").is_file() and not list(tokenizer.glob("*.safetensors"))
