"""Expert knowledge per class for CoDer: ``ex2 knowledge``.

    ex2 knowledge --dataset samples --llm smollm2 --output runs/knowledge/knowledge.jsonl
    ex2 knowledge --dataset samples --llm smollm2 --adapter runs/train/adapter --pairs nearest:3 ...
    ex2 knowledge --dataset samples --from-json attributes=att.json --from-json ovo=ovo.json ...

Four kinds, after CoDer (Yi et al., CVPR 2024): ``attributes`` (what sets the class apart in a
photo), ``analogous`` (other things it looks like), ``synonyms`` (WordNet lemmas of the synset whose
gloss is nearest the class name in the VLM's text space) and ``ovo`` (for a confusable pair, what
sets the first apart from the second). Pairs are chosen without labels: ``--pairs nearest:K`` takes
each class's K nearest classes by the VLM's class-name embeddings, asked in both orders. As in
CoDer, an analogue whose VLM text similarity to another class of the dataset exceeds
``--analogous-max-similarity`` is dropped and the question asked again, naming what to avoid.

Answers are split into items by one rule (:mod:`ex2.knowledge.answers`). Output: one JSON record
per item (:mod:`ex2.knowledge.records`), ``{concept, class_id, kind, text, other_concept, model,
adapter, source}``. Each answered question is appended to ``OUTPUT.partial`` as it finishes
(:mod:`ex2.knowledge.asking`); a rerun with the same settings asks only what is missing. The
answers are kept as ``OUTPUT.answers.jsonl`` (question, raw completion, answer). The VLM's text
space (pairs, analogue filtering) is :mod:`ex2.knowledge.pairs`; synonyms :mod:`ex2.knowledge.wordnet`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from ex2.core.config import ConfigError, option, save_config
from ex2.core.io import check_output_path, output_lock, partial_path, resume_partial, write_jsonl
from ex2.core.names import LLM_FORMS
from ex2.data import concept_names
from ex2.knowledge.asking import LLM_KINDS, Asker, Question, ask_analogous
from ex2.knowledge.pairs import name_embeddings, nearest_pairs
from ex2.knowledge.records import KINDS, from_json, make_record
from ex2.knowledge.wordnet import wordnet, wordnet_synonyms
from ex2.llm.models import load_tokenizer, resolve_prompt_format
from ex2.llm.samplers import resolve_adapter, sampler_for
from ex2.vlm import load_vlm

RUN_SETTINGS = ("llm", "adapter", "sampler", "seed", "prompt_format", "max_new_tokens", "temperature",
                "top_p", "top_k", "vlm", "pairs", "analogous_max_similarity")
PARTIAL_HEADER = "ex2_knowledge_settings"  # the first line of OUTPUT.partial and OUTPUT.answers.jsonl


# --- config ---------------------------------------------------------------------------------


@dataclass
class KnowledgeConfig:
    """Ask an LLM CoDer's questions about every class; synonyms from WordNet."""

    dataset: str = option("samples", "dataset whose class names are the concepts (NAME or NAME:ROOT)")
    data_root: str | None = option(None, "folder holding the dataset (not needed for samples)")
    concepts: str | None = option(None, "text file of concepts, one a line (used instead of --dataset)")
    limit_concepts: int | None = option(None, "only the first N concepts (quick runs)")
    kinds: list[str] = option(list(KINDS), f"knowledge to gather: {', '.join(KINDS)} (comma-separated too)")
    llm: str = option("smollm2", f"base LLM: {LLM_FORMS}")
    adapter: str | None = option(None, "PEFT LoRA adapter folder or `ex2 train` run folder; none: the base LLM")
    sampler: Literal["transformers", "vllm"] = option("transformers", "transformers or vllm (CUDA or vLLM's CPU build)")
    vlm: str = option("conse", "VLM whose text space picks pairs, filters analogues and picks synsets")
    pairs: str = option("nearest:3", "one-vs-one pairs: nearest:K = each class's K nearest classes by "
                                     "the VLM's class-name embeddings (both orders asked)")
    analogous_max_similarity: float = option(
        0.9, "drop an analogue whose VLM text similarity to another class exceeds this, and ask again")
    analogous_retries: int = option(2, "times an analogue question is asked again after drops")
    max_items: int = option(10, "most items kept from one answer")
    max_new_tokens: int = option(96, "most tokens generated per answer")
    temperature: float = option(0.7, "sampling temperature; 0 means greedy")
    top_p: float = option(0.95, "nucleus sampling mass")
    top_k: int = option(0, "sample among the k likeliest tokens; 0 means no top-k")
    seed: int = option(0, "random seed; the same seed gives the same file")
    batch_size: int = option(16, "questions per generation batch")
    device: str | None = option(None, "torch device (default: cuda if available)")
    dtype: Literal["auto", "fast", "fp32", "fp16", "bf16"] = option("auto", "LLM dtype (see ex2 generate --dtype)")
    precision: str = option("auto", "VLM precision: fp32, fp16, bf16 or auto")
    merge_adapter: bool = option(False, "merge the adapter into the weights in memory")
    prompt_format: Literal["auto", "base", "chat"] = option("auto", "base, chat or auto (chat if it has one)")
    from_json: list[str] = option([], "KIND=FILE: knowledge you already have, JSON {class: [items]} "
                                      "(ovo: {class: {other class: [items]}}); asks no LLM for that kind")
    output: str = option("runs/knowledge/knowledge.jsonl", "output JSONL file, one item a line")

    def __post_init__(self) -> None:
        self.kinds = [k.strip() for item in self.kinds for k in item.split(",") if k.strip()]
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ConfigError(f"--kinds: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(KINDS)}")
        self.from_json = [f.strip() for item in self.from_json for f in item.split(",") if f.strip()]
        for item in self.from_json:
            kind, _, path = item.partition("=")
            if kind not in KINDS or not path:
                raise ConfigError(f"--from-json {item!r}: expected KIND=FILE with KIND one of {', '.join(KINDS)}")
        pair_count(self.pairs)
        for name in ("max_items", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.analogous_retries < 0 or not self.temperature >= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError("--analogous-retries, --temperature and --top-k must be >= 0, --top-p in (0, 1]")
        if not -1 <= self.analogous_max_similarity <= 1:
            raise ConfigError(f"--analogous-max-similarity is a cosine in [-1, 1], not {self.analogous_max_similarity}")


def pair_count(pairs: str) -> int:
    """K of ``nearest:K``."""
    kind, _, k = pairs.partition(":")
    if kind != "nearest" or not k.isdigit() or int(k) < 1:
        raise ConfigError(f"--pairs {pairs!r}: expected nearest:K with K >= 1, e.g. nearest:3")
    return int(k)


# --- run ------------------------------------------------------------------------------------


def answers_path(output: Path) -> Path:
    return output.with_name(output.name + ".answers.jsonl")


def config_path(output: Path) -> Path:
    return output.with_name(output.name + ".config.yaml")


def check_outputs(config: KnowledgeConfig) -> Path:
    """The output file and the files beside it, checked before anything is read or loaded."""
    output = check_output_path(config.output)
    for beside in (partial_path(output), answers_path(output), config_path(output)):
        check_output_path(beside, flag=f"--output (its {beside.name.removeprefix(output.name)})")
    return output


def run_settings(config: KnowledgeConfig, adapter: Path | None, prompt_format: str) -> dict[str, Any]:
    values = dataclasses.asdict(config) | {"adapter": str(adapter) if adapter else None,
                                           "prompt_format": prompt_format}
    return {name: values[name] for name in RUN_SETTINGS}


def gather(config: KnowledgeConfig, concepts: list[str], asker: Asker, settings: dict) -> list[dict]:
    """Every record of the kinds asked, in (kind, class, other class) order."""
    given = {item.partition("=")[0]: item.partition("=")[2] for item in config.from_json}
    records: list[dict] = []
    for kind, path in given.items():
        records += from_json(path, kind, concepts)
    wanted = [k for k in config.kinds if k not in given]
    if not wanted:
        return records
    vlm = load_vlm(config.vlm, config.device, config.precision)
    class_embeddings = name_embeddings(vlm, concepts)
    model, adapter = settings["llm"], settings["adapter"]
    if "attributes" in wanted:
        questions = [Question("attributes", c, name) for c, name in enumerate(concepts)]
        answers = asker.ask(questions)
        for q in questions:
            records += [make_record(q.concept, q.class_id, "attributes", t, None, model, adapter, "llm")
                        for t in asker.items(answers, q)]
    if "analogous" in wanted:
        kept = ask_analogous(asker, vlm, concepts, class_embeddings, config.analogous_retries,
                             config.analogous_max_similarity)
        for c, items in kept.items():
            records += [make_record(concepts[c], c, "analogous", t, None, model, adapter, "llm") for t in items]
    if "ovo" in wanted and len(concepts) > 1:
        pairs = nearest_pairs(class_embeddings, pair_count(config.pairs))
        questions = [Question("ovo", a, concepts[a], concepts[b]) for a, b in pairs]
        answers = asker.ask(questions)
        for q in questions:
            records += [make_record(q.concept, q.class_id, "ovo", t, q.other, model, adapter, "llm")
                        for t in asker.items(answers, q)]
    if "synonyms" in wanted:
        reader = wordnet()
        for c, name in enumerate(concepts):
            records += [make_record(name, c, "synonyms", s, None, None, None, "wordnet")
                        for s in wordnet_synonyms(reader, name, vlm.encode_texts)]
    return records


def run(config: KnowledgeConfig) -> Path:
    """``ex2 knowledge``: the output JSONL file (one run at a time writes it)."""
    output = check_outputs(config)
    with output_lock(output, "ex2 knowledge"):
        return _run(config, output)


def _run(config: KnowledgeConfig, output: Path) -> Path:
    concepts = concept_names(config.concepts) if config.concepts else concept_names(config.dataset, config.data_root)
    concepts = concepts[: config.limit_concepts] if config.limit_concepts else concepts
    adapter = resolve_adapter(config.adapter) if config.adapter else None
    asks_llm = any(k in LLM_KINDS for k in config.kinds if not any(f.startswith(f"{k}=") for f in config.from_json))
    fmt = resolve_prompt_format(load_tokenizer(config.llm), config.prompt_format) if asks_llm else config.prompt_format
    settings = run_settings(config, adapter, fmt)
    partial_file = partial_path(output)
    done = resume_partial(partial_file, settings, "partial knowledge", ("key",), header=PARTIAL_HEADER)
    asker = Asker(partial(sampler_for, config, settings["adapter"]), partial_file,
                  {json.dumps(r["key"]): r for r in done}, fmt, config.seed, config.batch_size, config.max_items)
    records = gather(config, concepts, asker, settings)
    write_jsonl(output, records)
    save_config(dataclasses.replace(config, prompt_format=fmt), output.parent, name=config_path(output).name)
    partial_file.replace(answers_path(output))  # the raw answers, kept; moved back to .partial it re-parses
    counts = {k: sum(r["kind"] == k for r in records) for k in KINDS}
    print(f"knowledge for {len(concepts)} concepts: {counts} -> {output}")
    return output
