"""The embedded smollm2: converted once from the shipped GGUF, then loaded like any folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from ex2.llm import models as llm

pytestmark = pytest.mark.slow


def test_smollm2_converts_to_a_plain_llama_folder(shared_cache):
    folder = llm.embedded_llm_dir("smollm2")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" not in set(weights.keys())
    model, tokenizer = llm.load_llm("smollm2", device="cpu")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    prompt = llm.format_prompt(tokenizer, "Describe a photo of a cat.")
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer([prompt], return_tensors="pt")
    with torch.inference_mode():
        logits = model(**inputs).logits[0, -1]
    # a real instruct model answers fluently: its next token is confidently predicted
    assert torch.softmax(logits, -1).max() > 0.2


def test_killed_conversion_leaves_no_folder(tmp_cache, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        llm.embedded_llm_dir("smollm2")
    models = tmp_cache / "models"
    assert list(models.iterdir()) == []


def test_base_and_chat_formats(shared_cache):
    tokenizer = llm.load_tokenizer("smollm2")
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert llm.format_prompt(tokenizer, "Describe a cat.", "base") == "Describe a cat.\n\n"
    with pytest.raises(ValueError, match="auto, base or chat"):
        llm.format_prompt(tokenizer, "x", "other")
