"""Shared fixtures: every test gets its own EX2 cache unless it asks for the shared one; the tiny
random-init models (open_clip, transformers CLIP and SigLIP, Llama) are built once per session,
saved the way users keep real ones, and only read by the tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Models embedded in packages are converted once per machine; keep that cache between tests.
SHARED_CACHE = Path(os.environ.get("EX2_TEST_CACHE", Path.home() / ".cache" / "ex2-test"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``vllm`` skip where vLLM is not installed (the main venv; ``make test-vllm`` runs them)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return
    skip = pytest.mark.skip(reason="vLLM is not installed: make test-vllm runs these in the vLLM venv")
    for item in items:
        if item.get_closest_marker("vllm"):
            item.add_marker(skip)


@pytest.fixture
def lock_holder():
    """Start another process holding ``output_lock(path, command)``; yields a function that takes
    (path, command) and returns the holder's pid. Every holder is killed at the end (which frees it)."""
    import subprocess
    import sys

    repo, holders = Path(__file__).resolve().parents[1], []

    def hold(path: Path, command: str) -> int:
        holder = subprocess.Popen(
            [sys.executable, "-c", "import time\nfrom ex2.core.io import output_lock\n"
             f"with output_lock({str(path)!r}, {command!r}):\n    print('held', flush=True)\n    time.sleep(120)\n"],
            cwd=repo, stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(repo)})
        holders.append(holder)
        assert holder.stdout.readline().strip() == "held"
        return holder.pid

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()


@pytest.fixture
def shared_cache(monkeypatch) -> Path:
    """The long-lived cache holding converted embedded models and materialised samples."""
    monkeypatch.setenv("EX2_CACHE", str(SHARED_CACHE))
    return SHARED_CACHE


@pytest.fixture
def tmp_cache(monkeypatch, tmp_path) -> Path:
    """A fresh, empty cache for tests that check what gets written there."""
    cache = tmp_path / "ex2-cache"
    monkeypatch.setenv("EX2_CACHE", str(cache))
    return cache


# --- tiny models ----------------------------------------------------------------------------------

TINY_ARCH = "ex2-tiny-clip"
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,'!?-"


@pytest.fixture(scope="session")
def open_clip_dir(tmp_path_factory) -> Path:
    """A ``local-dir:`` folder (config + safetensors) and a bare checkpoint file beside it."""
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("open_clip")
    (root / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(root / f"{TINY_ARCH}.json")  # makes "ex2-tiny-clip:/ckpt.pt" valid
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH)
    folder = root / "tiny"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
    save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    torch.save(model.state_dict(), root / "ckpt.pt")
    return folder


def _tiny_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in LETTERS:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(f"{char}</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=24), len(vocab)


def _tiny_configs(vocab_size: int) -> tuple[dict, dict]:
    text = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=24,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    return text, vision


@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory) -> Path:
    """A transformers CLIP folder: model, tokenizer from a tiny vocab, 32-pixel image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("hf_clip")
    tokenizer, vocab_size = _tiny_tokenizer()
    text, vision = _tiny_configs(vocab_size)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="session")
def hf_siglip_dir(tmp_path_factory) -> Path:
    """A transformers SigLIP folder (with the tiny CLIP tokenizer: SigLIP's needs sentencepiece)."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    folder = tmp_path_factory.mktemp("hf_siglip")
    tokenizer, vocab_size = _tiny_tokenizer()
    text, vision = _tiny_configs(vocab_size)
    text["projection_size"] = 32
    torch.manual_seed(0)
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def owlv2_dir(tmp_path_factory) -> Path:
    """A transformers OWLv2 detector folder at 32 pixels. Its tokenizer pads with id 0, as OWLv2's
    does (``forward`` treats a query starting with 0 as padding), and ends texts with the highest id
    (its text tower pools at the argmax of the ids)."""
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    vocab = {"!": 0, "!</w>": 1}
    for char in LETTERS:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(f"{char}</w>", len(vocab))
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=48, pad_token="!")
    text, vision = _tiny_configs(len(vocab))
    text.update(max_position_embeddings=48, bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"], pad_token_id=0)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("owlv2")
    # the class head compares text features with patch features of the text tower's width
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
    with torch.no_grad():  # small heads, as after training: boxes near their patch, scores not saturated
        for head in (model.class_head, model.box_head, model.objectness_head):
            for layer in head.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.normal_(0, 0.02)
                    layer.bias.zero_()
    model.save_pretrained(folder)
    Owlv2Processor(Owlv2ImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_open_clip(open_clip_dir):
    """The tiny open_clip model loaded as an ex2 VLM on the CPU."""
    from ex2.vlm import load_vlm

    return load_vlm(f"local-dir:{open_clip_dir}", device="cpu")


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    """A 2-layer, 16-wide Llama saved with the smollm2 tokenizer (and its chat template)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ex2.llm.models import resolve_llm

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EX2_CACHE", str(SHARED_CACHE))
        tokenizer = AutoTokenizer.from_pretrained(resolve_llm("smollm2"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_llm")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
