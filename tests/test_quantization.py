"""QLoRA through bitsandbytes on whatever device is here (its CPU backend without CUDA): two GRPO steps
on the embedded SmolLM2 loaded in 4 and in 8 bits, only the adapter trained, the adapter loadable and
sampled by ``ex2 generate``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ex2.cli import main
from ex2.core.io import read_jsonl
from ex2.llm.models import quantization_config, resolve_llm

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed: pip install 'ex2[quant]'")


def test_quantization_configs_follow_the_run_precision():
    assert quantization_config("none") is None
    eight = quantization_config("8bit")
    assert eight.load_in_8bit and not eight.load_in_4bit
    four = quantization_config("4bit", torch.bfloat16)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("4bit").bnb_4bit_compute_dtype == torch.float32  # a CPU run's precision
    with pytest.raises(ValueError, match="one of none, 4bit, 8bit"):
        quantization_config("2bit")


def test_missing_bitsandbytes_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)  # import fails as if absent
    run = tmp_path / "run"
    assert main(["train", "--llm", "smollm2", "--vlm", "conse", "--quantization", "4bit",
                 "--output", str(run)]) == 1
    assert "pip install 'ex2[quant]'" in capsys.readouterr().err
    assert not run.exists()  # refused before the run folder is made


@pytest.mark.slow
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_trains_only_the_adapter_and_generate_samples_it(bits, shared_cache, tmp_path):
    run = tmp_path / bits
    argv = ["train", "--llm", "smollm2", "--vlm", "conse", "--dataset", "samples", "--reward", "ex2",
            "--images-per-class", "2", "--batch-size", "4", "--num-generations", "4",
            "--max-completion-length", "8", "--heldout-templates", "2", "--eval-samples", "0",
            "--learning-rate", "1e-2", "--max-steps", "2", "--save-steps", "2", "--quantization", bits,
            "--output", str(run)]
    assert main(argv) == 0
    assert [r["step"] for r in read_jsonl(run / "log.jsonl")] == [1, 2]

    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)  # only the adapter was saved
    assert any(name.endswith("lora_B.weight") and value.abs().sum() > 0 for name, value in adapter.items()), \
        "lora_B starts at zero: two steps at lr 1e-2 must have moved it"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(resolve_llm("smollm2"), quantization_config=quantization_config(bits))
    assert getattr(base, f"is_loaded_in_{bits[0]}bit")
    model = PeftModel.from_pretrained(base, str(run / "adapter"))  # loadable on the quantized base
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert not trainable  # inference mode: nothing left trainable, the base frozen under the adapter

    if bits == "8bit":
        return  # one quantized run is enough for generate
    out = tmp_path / "gen.jsonl"
    assert main(["generate", "--llm", "smollm2", "--adapter", str(run), "--dataset", "samples",
                 "--limit-concepts", "2", "--max-new-tokens", "8",
                 "--output", str(out)]) == 0
    records = read_jsonl(out)
    assert records and {r["adapter"] for r in records} == {str(run / "adapter")}
