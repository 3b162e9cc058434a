"""ex2 generate: samplers, resumable runs, EX2's format, the runner script."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import SHARED_CACHE

from ex2.cli import main
from ex2.core.io import partial_path, read_jsonl
from ex2.core.text import clean_description
from ex2.generate.stage import RECORD_FIELDS
from ex2.llm.samplers import (
    SamplingSettings,
    TransformersSampler,
    encode_prompts,
    even_batch_size,
    record_seed,
    resolve_adapter,
    vllm_engine_kwargs,
    vllm_lora_args,
    vllm_max_lora_rank,
    vllm_prompts,
    vllm_sampling_kwargs,
)

REPO = Path(__file__).resolve().parents[1]
CONCEPTS = ["cat", "rocket", "daisy"]
TEMPLATES = ["Describe a {}.", "What does a {} look like?"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> SimpleNamespace:
    """A random-init two-layer Llama with SmolLM2's tokenizer, a LoRA adapter on it, and inputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ex2.llm.models import resolve_llm

    root = tmp_path_factory.mktemp("tiny-llm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EX2_CACHE", str(SHARED_CACHE))
        tokenizer = AutoTokenizer.from_pretrained(resolve_llm("smollm2"))
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(root / "run" / "checkpoint-2")
    (root / "concepts.txt").write_text("\n".join(CONCEPTS) + "\n")
    (root / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return SimpleNamespace(model=root / "model", run=root / "run", adapter=root / "run" / "checkpoint-2",
                           concepts=root / "concepts.txt", templates=root / "templates.txt")


def argv(tiny, output: Path, *extra: str) -> list[str]:
    return ["generate", "--llm", str(tiny.model), "--concepts", str(tiny.concepts),
            "--templates", str(tiny.templates), "--output", str(output), "--max-new-tokens", "6",
            "--batch-size", "4", *extra]


def generate(tiny, output: Path, *extra: str) -> list[dict]:
    assert main(argv(tiny, output, *extra)) == 0
    return read_jsonl(output)


def keys(records: list[dict]) -> list[tuple]:
    return [(r["concept"], r["template"], r["sample"]) for r in records]


def test_record_seed_depends_on_the_description_not_the_batch():
    assert record_seed(0, "cat", "Describe a {}.", 0) == record_seed(0, "cat", "Describe a {}.", 0)
    seeds = {record_seed(s, c, "t {}", k) for s in (0, 1) for c in ("cat", "dog") for k in (0, 1)}
    assert len(seeds) == 8


# --- the transformers sampler ---------------------------------------------------------------


@pytest.mark.parametrize(("count", "most", "expected"), [
    (200, 64, 50), (40, 64, 40), (65, 64, 33), (128, 64, 64), (1, 64, 1), (7, 2, 2), (200, 32, 29),
])
def test_even_batches_leave_no_small_last_batch(count, most, expected):
    size = even_batch_size(count, most)
    batches = -(-count // size)
    assert size == expected and size <= most and batches == -(-count // most)
    assert count - (batches - 1) * size >= size - batches  # the last batch is nearly full


def test_even_batch_size_rejects_nothing_to_split():
    with pytest.raises(ValueError, match="at least 1"):
        even_batch_size(0)


def test_generate_writes_one_record_per_concept_template_sample(tiny, tmp_cache, tmp_path):
    out = tmp_path / "out" / "descriptions.jsonl"
    legacy = tmp_path / "out" / "legacy.json"
    records = generate(tiny, out, "--samples-per-template", "2", "--legacy-json", str(legacy))
    expected = [(c, t, s) for c in CONCEPTS for t in TEMPLATES for s in range(2)]
    assert keys(records) == expected
    assert all(set(r) == set(RECORD_FIELDS) for r in records)
    assert {r["prompt_format"] for r in records} == {"chat"}  # SmolLM2's tokenizer has a chat template
    assert {r["model"] for r in records} == {str(tiny.model)} and {r["adapter"] for r in records} == {None}
    assert [r["class_id"] for r in records[::4]] == [0, 1, 2]
    assert not any("<|" in r["description"] for r in records)
    assert not partial_path(out).exists()
    saved = (out.parent / "descriptions.jsonl.config.yaml").read_text()
    assert "prompt_format: chat" in saved and "samples_per_template: 2" in saved
    assert json.loads(legacy.read_text()) == [  # EX2's shape: per class, its raw completions
        [r["raw"] for r in records if r["concept"] == c] for c in CONCEPTS
    ]
    back = tmp_path / "out" / "back.jsonl"
    assert main(["generate", "--from-legacy", str(legacy), "--templates", str(tiny.templates), "--classnames",
                 str(tiny.concepts), "--samples-per-template", "2", "--output", str(back)]) == 0
    assert [{k: r[k] for k in ("concept", "class_id", "template", "sample", "raw", "description")}
            for r in read_jsonl(back)] == [
        {k: r[k] for k in ("concept", "class_id", "template", "sample", "raw")}
        | {"description": clean_description(r["raw"])} for r in records]


def test_same_seed_same_file_whatever_the_batch_size(tiny, tmp_cache, tmp_path):
    first = generate(tiny, tmp_path / "a.jsonl")
    assert generate(tiny, tmp_path / "b.jsonl", "--batch-size", "1") == first
    other = generate(tiny, tmp_path / "c.jsonl", "--seed", "1")
    assert [r["raw"] for r in other] != [r["raw"] for r in first]


def test_greedy_and_base_format(tiny, tmp_cache, tmp_path):
    greedy = generate(tiny, tmp_path / "g.jsonl", "--temperature", "0", "--prompt-format", "base",
                      "--limit-concepts", "1")
    assert keys(greedy) == [("cat", t, 0) for t in TEMPLATES]
    assert {r["prompt_format"] for r in greedy} == {"base"}
    again = generate(tiny, tmp_path / "h.jsonl", "--temperature", "0", "--prompt-format", "base",
                     "--limit-concepts", "1", "--seed", "7")
    assert [r["raw"] for r in again] == [r["raw"] for r in greedy]


def test_adapter_changes_samples_and_merging_does_not(tiny, tmp_cache, tmp_path):
    base = generate(tiny, tmp_path / "base.jsonl")
    adapted = generate(tiny, tmp_path / "lora.jsonl", "--adapter", str(tiny.run))  # latest checkpoint
    merged = generate(tiny, tmp_path / "merged.jsonl", "--adapter", str(tiny.adapter), "--merge-adapter")
    assert {r["adapter"] for r in adapted} == {str(tiny.adapter)}
    assert [r["raw"] for r in adapted] != [r["raw"] for r in base]
    assert [r["raw"] for r in merged] == [r["raw"] for r in adapted]


def test_resolve_adapter_in_a_run_folder(tiny, tmp_path):
    run = tmp_path / "run"
    for step in (2, 10):
        shutil.copytree(tiny.adapter, run / f"checkpoint-{step}")
    assert resolve_adapter(run) == run / "checkpoint-10"
    shutil.copytree(tiny.adapter, run / "adapter")  # the final adapter of a finished run wins
    assert resolve_adapter(run) == run / "adapter"
    assert resolve_adapter(run / "checkpoint-2") == run / "checkpoint-2"
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        resolve_adapter(tmp_path)


def test_bad_adapter_and_options_are_reported(tiny, tmp_cache, tmp_path, capsys):
    assert main(argv(tiny, tmp_path / "x.jsonl", "--adapter", str(tmp_path))) == 1
    assert "adapter_config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv(tiny, tmp_path / "x.jsonl", "--top-p", "0"))
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err


# --- resuming -------------------------------------------------------------------------------


def test_resume_after_a_crash_samples_only_what_is_missing(tiny, tmp_cache, tmp_path, monkeypatch):
    reference = generate(tiny, tmp_path / "ref.jsonl", "--samples-per-template", "2")
    out = tmp_path / "resumed.jsonl"
    real, calls = TransformersSampler.generate, []

    def crash_on_third_batch(self, prompt_ids, seeds):
        calls.append(len(seeds))
        if len(calls) == 3:
            raise RuntimeError("injected crash")
        return real(self, prompt_ids, seeds)

    monkeypatch.setattr(TransformersSampler, "generate", crash_on_third_batch)
    with pytest.raises(RuntimeError, match="injected"):
        main(argv(tiny, out, "--samples-per-template", "2"))
    assert not out.exists()
    assert len(read_jsonl(partial_path(out))) == 1 + 8  # settings line + two batches of four

    calls.clear()
    assert main(argv(tiny, out, "--samples-per-template", "2")) == 0
    assert calls == [4]  # 12 descriptions, 8 already done
    assert read_jsonl(out) == reference
    assert not partial_path(out).exists()


def test_resume_after_sigkill(tiny, tmp_cache, tmp_path):
    reference = generate(tiny, tmp_path / "ref.jsonl")
    out = tmp_path / "killed.jsonl"
    script = (
        "import os, signal, sys\n"
        "from ex2.cli import main\n"
        "from ex2.llm.samplers import TransformersSampler\n"
        "real, calls = TransformersSampler.generate, []\n"
        "def killer(self, ids, seeds):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, ids, seeds)\n"
        "TransformersSampler.generate = killer\n"
        f"main({argv(tiny, out)!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists() and len(read_jsonl(partial_path(out))) == 1 + 4
    assert main(argv(tiny, out)) == 0
    records = read_jsonl(out)
    assert records == reference and len(set(keys(records))) == len(records) == 6


def test_partial_run_with_other_settings_is_refused(tiny, tmp_cache, tmp_path, capsys):
    out = tmp_path / "d.jsonl"
    settings = json.dumps({"ex2_partial_settings": {"temperature": 0.5}})
    record = json.dumps(dict.fromkeys(RECORD_FIELDS, "x"))
    partial_path(out).write_text(f"{settings}\n{record}\n")
    assert main(argv(tiny, out)) == 1
    err = capsys.readouterr().err
    assert str(partial_path(out)) in err and "temperature: 0.5 -> 1.0" in err and "delete" in err


# --- EX2's format ---------------------------------------------------------------------------


def test_from_legacy_object_and_list(tiny, tmp_cache, tmp_path):
    legacy = tmp_path / "ex2.json"
    legacy.write_text(json.dumps({"cat": [" Furry.\n\nmore", "Whiskers.</s>"], "rocket": ["Tall.", "Fast."]}))
    out = tmp_path / "from.jsonl"
    assert main(["generate", "--from-legacy", str(legacy), "--templates", str(tiny.templates),
                 "--output", str(out)]) == 0
    records = read_jsonl(out)
    assert [(r["concept"], r["class_id"], r["template"], r["description"]) for r in records] == [
        ("cat", 0, TEMPLATES[0], "Furry."), ("cat", 0, TEMPLATES[1], "Whiskers."),
        ("rocket", 1, TEMPLATES[0], "Tall."), ("rocket", 1, TEMPLATES[1], "Fast."),
    ]
    assert records[0]["raw"] == " Furry.\n\nmore" and all(set(r) == set(RECORD_FIELDS) for r in records)

    legacy.write_text(json.dumps([["a", "b"], ["c", "d"], ["e", "f"]]))  # EX2's own output: one list per class
    assert main(["generate", "--from-legacy", str(legacy), "--concepts", str(tiny.concepts),
                 "--templates", str(tiny.templates), "--output", str(out)]) == 0
    assert [(r["concept"], r["template"], r["sample"], r["raw"]) for r in read_jsonl(out)] == [
        (c, t, 0, raw) for (c, t), raw in zip([(c, t) for c in CONCEPTS for t in TEMPLATES], "abcdef", strict=True)]


@pytest.mark.parametrize(("content", "extra", "message"), [
    ('[["a", "b"], ["c"], ["e", "f"]]', [], "class 1 ('rocket') has 1 completions; expected 2 templates x 1 sample(s)"),
    ('[["a", "b"], ["c", "d"], ["e", "f"]]', ["--samples-per-template", "2"], "expected 2 templates x 2 sample(s) = 4"),
])
def test_from_legacy_checks_counts(tiny, tmp_path, capsys, content, extra, message):
    legacy = tmp_path / "ex2.json"
    legacy.write_text(content)
    code = main(["generate", "--from-legacy", str(legacy), "--classnames", str(tiny.concepts), "--templates",
                 str(tiny.templates), "--output", str(tmp_path / "o.jsonl"), *extra])
    err = capsys.readouterr().err
    assert code == 1 and str(legacy) in err and message in err
    assert not (tmp_path / "o.jsonl").exists()


def test_from_legacy_needs_templates_and_classnames_count(tiny, tmp_path, capsys):
    legacy = tmp_path / "ex2.json"
    legacy.write_text('[["a", "b"], ["c", "d"]]')
    with pytest.raises(SystemExit):
        main(["generate", "--from-legacy", str(legacy), "--classnames", str(tiny.concepts)])
    assert "--from-legacy needs --templates" in capsys.readouterr().err
    code = main(["generate", "--from-legacy", str(legacy), "--classnames", str(tiny.concepts), "--templates",
                 str(tiny.templates), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 1 and "holds 3 class names but the EX2 output has 2 classes" in err and str(tiny.concepts) in err


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ('{"cat": "one string"}', "must be a list of strings"),
    ('[["a"], ["b"]]', "holds 2 description lists but the concepts number 3"),
    ("42", "expected EX2's output: a list of completion lists, one per class"),
])
def test_from_legacy_rejects_bad_files(tiny, tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code = main(["generate", "--from-legacy", str(bad), "--concepts", str(tiny.concepts),
                 "--templates", str(tiny.templates), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 1 and str(bad) in err and message in err


# --- vllm requests, built without a GPU -----------------------------------------------------


def test_vllm_requests(tiny):
    settings = SamplingSettings(max_new_tokens=7, temperature=0.5, top_p=0.9)
    kwargs = vllm_sampling_kwargs(settings, seed=123, eos_ids=[2])
    assert (kwargs["max_tokens"], kwargs["temperature"], kwargs["top_p"]) == (7, 0.5, 0.9)
    assert kwargs["n"] == 1 and kwargs["seed"] == 123 and kwargs["stop_token_ids"] == [2]
    assert kwargs["skip_special_tokens"] is False  # clean_description strips them, knowing which they were
    assert kwargs["top_k"] == -1  # top_k 0 (off) is -1 for vllm
    assert vllm_sampling_kwargs(SamplingSettings(top_k=5), 1, [2])["top_k"] == 5
    engine = vllm_engine_kwargs("/models/base", tiny.adapter, seed=3, dtype="bf16")
    assert engine["enable_lora"] is True and engine["max_lora_rank"] == 8  # rank 4 rounds up
    assert engine["model"] == "/models/base" and engine["dtype"] == "bfloat16" and engine["seed"] == 3
    assert "enable_lora" not in vllm_engine_kwargs("/models/base", None)
    assert vllm_lora_args(tiny.adapter) == ("checkpoint-2", 1, str(tiny.adapter.resolve()))
    assert vllm_lora_args(None) is None
    assert vllm_prompts([[1, 2], [3]]) == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]
    assert [vllm_max_lora_rank(r) for r in (1, 2, 16, 17, 512)] == [1, 8, 16, 32, 512]


def test_vllm_accepts_every_argument_we_pass(tiny):
    vllm = pytest.importorskip("vllm")
    import inspect

    sampling = set(inspect.signature(vllm.SamplingParams).parameters)
    assert set(vllm_sampling_kwargs(SamplingSettings(), 0, [2])) <= sampling
    engine = {f.name for f in dataclasses.fields(vllm.EngineArgs)} | set(inspect.signature(vllm.LLM).parameters)
    assert set(vllm_engine_kwargs("/models/base", tiny.adapter, seed=3)) <= engine


def test_concepts_from_name_colon_root(tmp_path):
    import PIL.Image

    from ex2.generate.stage import GenerateConfig, load_concepts

    for cls in ("golden_retriever", "tabby"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        PIL.Image.new("RGB", (4, 4)).save(tmp_path / "tree" / cls / "0.png")
    tree = tmp_path / "tree"
    joined = load_concepts(GenerateConfig(dataset=f"imagefolder:{tree}"))
    assert joined == load_concepts(GenerateConfig(dataset="imagefolder", data_root=str(tree)))
    assert joined == ["golden retriever", "tabby"]
    concepts = tmp_path / "c.txt"
    concepts.write_text("otter\n")
    assert load_concepts(GenerateConfig(dataset=f"imagefolder:{tree}", concepts=str(concepts))) == ["otter"]
    with pytest.raises(ValueError, match="given twice"):
        GenerateConfig(dataset=f"imagefolder:{tree}", data_root=str(tmp_path))


def test_prompts_match_between_samplers(tiny):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.model)
    chat = encode_prompts(tokenizer, ["<|im_start|>user\nhi<|im_end|>\n"], "chat")[0]
    assert chat == tokenizer("<|im_start|>user\nhi<|im_end|>\n", add_special_tokens=False)["input_ids"]


def test_vllm_missing_names_the_extra(tiny, tmp_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now fails, installed or not
    assert main(argv(tiny, tmp_path / "v.jsonl", "--sampler", "vllm")) == 1
    assert "pip install 'ex2[vllm]'" in capsys.readouterr().err
    assert main(argv(tiny, tmp_path / "v.jsonl", "--limit-concepts", "1")) == 0  # no stale settings kept


# --- the runner script ----------------------------------------------------------------------


def test_inference_runner(tiny, tmp_cache, tmp_path):
    out = tmp_path / "runner.jsonl"
    env = os.environ | {"EX2_VENV": str(Path(sys.executable).parent.parent)}
    proc = subprocess.run(
        ["bash", str(REPO / "inference_runner.sh"), str(tiny.adapter), str(tiny.model), str(out), "samples",
         "--limit-concepts", "1", "--templates", str(tiny.templates), "--max-new-tokens", "4"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = read_jsonl(out)
    assert len(records) == 2 and records[0]["adapter"] == str(tiny.adapter)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("generate*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    from ex2.core.config import parse_config
    from ex2.generate.stage import GenerateConfig

    config = parse_config(GenerateConfig, ["--config", str(path)], prog="ex2 generate")
    assert config.max_new_tokens == 32 and config.top_k == 0 and config.top_p == 1.0


# --- real models ----------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_describes_a_sample_concept(shared_cache, tmp_path):
    from ex2.data import load_templates

    templates = tmp_path / "templates.txt"
    templates.write_text("\n".join(load_templates("describe25")[:2]) + "\n")  # 2 of ex2's 25: a lean test
    out = tmp_path / "smollm2.jsonl"
    assert main(["generate", "--dataset", "samples", "--llm", "smollm2", "--limit-concepts", "1",
                 "--templates", str(templates), "--max-new-tokens", "16", "--output", str(out)]) == 0
    records = read_jsonl(out)
    assert len(records) == 2 and {r["prompt_format"] for r in records} == {"chat"}
    assert any(r["description"] for r in records)
    assert not any("<|" in r["description"] or "\n" in r["description"] for r in records)


@pytest.mark.gpu
def test_vllm_sampler_on_gpu(shared_cache, tmp_path):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from peft import LoraConfig, get_peft_model

    from ex2.llm.models import load_llm

    model, _ = load_llm("smollm2", device="cpu")
    lora = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(tmp_path / "adapter")
    flags = ["--dataset", "samples", "--llm", "smollm2", "--limit-concepts", "2", "--sampler", "vllm",
             "--adapter", str(tmp_path / "adapter")]
    assert main(["generate", *flags, "--output", str(tmp_path / "v.jsonl")]) == 0
    assert main(["generate", *flags, "--output", str(tmp_path / "w.jsonl")]) == 0
    first, again = read_jsonl(tmp_path / "v.jsonl"), read_jsonl(tmp_path / "w.jsonl")
    assert len(first) == 2 * 25 and [r["raw"] for r in again] == [r["raw"] for r in first]


def test_classnames_name_the_datasets_concepts(tmp_path):
    from ex2.data.samples import SAMPLE_CONCEPTS
    from ex2.generate.stage import GenerateConfig, load_concepts

    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"Concept {n}" for n in range(len(SAMPLE_CONCEPTS))) + "\n")
    assert load_concepts(GenerateConfig(classnames=str(names))) == [f"Concept {n}" for n in range(len(SAMPLE_CONCEPTS))]
    assert load_concepts(GenerateConfig(classnames=str(names), limit_concepts=2)) == ["Concept 0", "Concept 1"]
    names.write_text("cat\ndog\n")
    with pytest.raises(ValueError, match=f"holds 2 class names but dataset samples has {len(SAMPLE_CONCEPTS)} classes"):
        load_concepts(GenerateConfig(classnames=str(names)))
