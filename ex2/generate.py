"""Description generation: ask an LLM (alone or with a LoRA adapter from ``ex2 train``) each query
template about each concept, and keep what it answers.

    ex2 generate --dataset samples --llm smollm2 --output runs/gen/descriptions.jsonl
    ex2 generate --dataset cub:/data/CUB_200_2011 --llm mistralai/Mistral-7B-v0.1 \\
        --adapter runs/train/cub --sampler vllm --output runs/gen/cub.jsonl --legacy-json runs/gen/cub.json
    ex2 generate --from-legacy ex2_pets.json --dataset pets:/data/pets --output runs/gen/pets.jsonl

One record per (concept, template, sample) goes to the JSONL output; a run that is killed resumes
from ``OUTPUT.partial`` and samples only what is missing. Every record draws its random numbers from
its own seed (:func:`record_seed`), so batching and resuming never change the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from ex2.config import ConfigError, data_root_option, dataset_option, llm_option, option, save_config
from ex2.io import append_jsonl, read_jsonl, repair_jsonl, write_json, write_jsonl
from ex2.names import split_dataset_name
from ex2.text import clean_description

RECORD_FIELDS = ("concept", "class_id", "template", "description", "raw", "model", "adapter",
                 "sample", "seed", "prompt_format")
# settings that change what is sampled; a partial file is resumed only when they match
RUN_SETTINGS = ("llm", "adapter", "sampler", "seed", "prompt_format", "max_new_tokens",
                "temperature", "top_p", "top_k")
PARTIAL_HEADER = "ex2_partial_settings"


# --- config ---------------------------------------------------------------------------------


@dataclass
class GenerateConfig:
    """Sample descriptions of every concept from a base LLM or a base LLM plus a LoRA adapter."""

    dataset: str = dataset_option()
    data_root: str | None = data_root_option()
    concepts: str | None = option(None, "text file of concepts, one a line (used instead of --dataset)")
    templates: str = option("ex2", "query template set (ex2, clip, ...) or a file, one template with {} a line")
    llm: str = llm_option()
    adapter: str | None = option(None, "PEFT LoRA adapter folder, or an `ex2 train` run folder (its adapter/, "
                                       "else its latest checkpoint-N); none: the base model alone")
    sampler: Literal["transformers", "vllm"] = option("transformers", "transformers (CPU/GPU) or vllm "
                                                      "(GPU, pip install 'ex2[vllm]')")
    output: str = option("runs/generate/descriptions.jsonl", "output JSONL file, one description a line")
    samples_per_template: int = option(1, "descriptions sampled per (concept, template)")
    max_new_tokens: int = option(32, "most tokens generated per description")
    temperature: float = option(1.0, "sampling temperature; 0 means greedy")
    top_p: float = option(1.0, "nucleus sampling mass; 1.0 keeps every token")
    top_k: int = option(0, "sample among the k likeliest tokens; 0 means no top-k")
    seed: int = option(0, "random seed; the same seed gives the same file")
    batch_size: int = option(32, "prompts per generation batch")
    device: str | None = option(None, "torch device for the transformers sampler (default: cuda if available)")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = option("auto", "model dtype (auto: bf16 on CUDA where supported, else fp16; fp32 on CPU)")
    merge_adapter: bool = option(False, "merge the adapter into the weights in memory (faster sampling)")
    prompt_format: Literal["auto", "base", "chat"] = option(
        "auto", "base: EX2's 'query\\n\\n'; chat: the tokenizer's chat template; auto: chat if it has one")
    limit_concepts: int | None = option(None, "only the first N concepts (quick runs)")
    legacy_json: str | None = option(None, "also write EX2's format: a JSON object class name -> descriptions")
    from_legacy: str | None = option(None, "convert an original EX2 output (JSON) into --output; samples nothing")

    def __post_init__(self) -> None:
        self.dataset, self.data_root = split_dataset_name(self.dataset, self.data_root)
        positive = {"samples_per_template": self.samples_per_template, "max_new_tokens": self.max_new_tokens,
                    "batch_size": self.batch_size}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        if self.limit_concepts is not None and self.limit_concepts < 1:
            raise ConfigError(f"--limit-concepts must be at least 1 (or left out), not {self.limit_concepts}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0 (0 is greedy), not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], not {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be >= 0 (0 turns top-k off), not {self.top_k}")


# --- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One description to sample."""

    class_id: int
    concept: str
    template_id: int
    template: str
    sample: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.concept, self.template, self.sample)

    @property
    def query(self) -> str:
        return self.template.format(self.concept)


def record_seed(seed: int, concept: str, template: str, sample: int) -> int:
    """The seed of one description, from the run seed and what it describes (not its batch)."""
    digest = hashlib.sha256(f"{seed}\0{concept}\0{template}\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)


def plan_jobs(concepts: list[str], templates: list[str], samples_per_template: int = 1) -> list[Job]:
    """Every (concept, template, sample), in output order."""
    return [Job(c, concept, t, template, s)
            for c, concept in enumerate(concepts)
            for t, template in enumerate(templates)
            for s in range(samples_per_template)]


def resolve_prompt_format(tokenizer, prompt_format: str) -> str:
    if prompt_format != "auto":
        return prompt_format
    from ex2.llm import uses_chat_template

    return "chat" if uses_chat_template(tokenizer) else "base"


# --- resumable sampling ---------------------------------------------------------------------


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def run_settings(config: GenerateConfig, adapter: Path | None, prompt_format: str) -> dict[str, Any]:
    values = dataclasses.asdict(config) | {"adapter": str(adapter) if adapter else None,
                                           "prompt_format": prompt_format}
    return {name: values[name] for name in RUN_SETTINGS}


def load_partial(path: Path, settings: dict[str, Any]) -> list[dict]:
    """Records of an interrupted run with the same settings, so that appending can go on after them.
    A line torn by a kill is dropped; a file without records starts over with these settings."""
    records: list[dict] = []
    if path.is_file():
        rows = repair_jsonl(path)
        if not rows or PARTIAL_HEADER not in rows[0]:
            raise ValueError(f"{path}: expected a partial descriptions file starting with its settings; "
                             "delete it to start over")
        records = rows[1:]
        if records:
            _check_partial(path, rows[0][PARTIAL_HEADER], settings, records)
    if not records:
        write_jsonl(path, [{PARTIAL_HEADER: settings}])
    return records


def _check_partial(path: Path, saved: dict, settings: dict, records: list[dict]) -> None:
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
    if changed:
        raise ValueError(f"{path}: left by an interrupted run with other settings ({'; '.join(changed)}); "
                         "rerun with those settings to resume, or delete the file to start over")
    for number, record in enumerate(records, start=2):
        missing = [f for f in RECORD_FIELDS if f not in record]
        if missing:
            raise ValueError(f"{path}:{number}: record lacks field(s) {', '.join(missing)}")


def make_record(job: Job, raw: str, prompt: str, special_tokens: list[str], settings: dict) -> dict:
    return {
        "concept": job.concept, "class_id": job.class_id, "template": job.template,
        "description": clean_description(raw, prompt=prompt, special_tokens=special_tokens), "raw": raw,
        "model": settings["llm"], "adapter": settings["adapter"], "sample": job.sample,
        "seed": settings["seed"], "prompt_format": settings["prompt_format"],
    }


def sample_missing(sampler, jobs: list[Job], partial: Path, settings: dict, batch_size: int) -> Iterator[int]:
    """Sample the jobs batch by batch, appending finished records to ``partial``; yields batch sizes."""
    from ex2.llm import format_prompt
    from ex2.samplers import encode_prompts

    tokenizer, fmt = sampler.tokenizer, settings["prompt_format"]
    special = list(getattr(tokenizer, "all_special_tokens", []))
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        prompts = [format_prompt(tokenizer, job.query, fmt) for job in batch]
        seeds = [record_seed(settings["seed"], *job.key) for job in batch]
        raws = sampler.generate(encode_prompts(tokenizer, prompts, fmt), seeds)
        for job, prompt, raw in zip(batch, prompts, raws, strict=True):
            append_jsonl(partial, make_record(job, raw, prompt, special, settings))
        yield len(batch)


def ordered_records(jobs: list[Job], records: Iterable[dict]) -> list[dict]:
    """Exactly one record per job, in job order (records of jobs no longer planned are dropped)."""
    by_key = {(r["concept"], r["template"], r["sample"]): r for r in records}
    return [by_key[job.key] for job in jobs]


def legacy_view(records: list[dict]) -> dict[str, list[str]]:
    """EX2's format: class name -> its descriptions, in record order."""
    out: dict[str, list[str]] = {}
    for record in records:
        out.setdefault(record["concept"], []).append(record["description"])
    return out


# --- EX2's format in ------------------------------------------------------------------------

Concepts = list[str] | Callable[[], list[str]] | None  # class names, or how to get them when needed


def _legacy_classes(path: Path, data: Any, concepts: Concepts) -> list[tuple[str, list]]:
    expected = ("a JSON object class name -> list of descriptions, or a list of description lists "
                "(one per class)")
    if isinstance(data, dict):
        classes = list(data.items())
    elif isinstance(data, list) and concepts is not None:
        concepts = concepts() if callable(concepts) else concepts
        if len(data) != len(concepts):
            raise ValueError(f"{path}: holds {len(data)} description lists but the concepts number "
                             f"{len(concepts)}; pass the --dataset or --concepts it was made for")
        classes = list(zip(concepts, data, strict=True))
    else:
        raise ValueError(f"{path}: expected {expected}")
    for name, descriptions in classes:
        if not isinstance(descriptions, list) or not all(isinstance(d, str) for d in descriptions):
            raise ValueError(f"{path}: descriptions of {name!r} must be a list of strings; expected {expected}")
    return classes


def from_legacy(path: str | Path, templates: list[str], concepts: Concepts = None) -> list[dict]:
    """Records from an original EX2 output file; the n-th description of a class answered template
    ``n mod len(templates)`` when the counts fit (else the template is unknown: None). A list of
    description lists (EX2's own output) takes its class names from ``concepts``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected EX2's descriptions JSON)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected EX2's descriptions JSON") from err
    records = []
    for class_id, (concept, descriptions) in enumerate(_legacy_classes(path, data, concepts)):
        fits = len(descriptions) % len(templates) == 0
        for n, raw in enumerate(descriptions):
            records.append({
                "concept": concept, "class_id": class_id,
                "template": templates[n % len(templates)] if fits else None,
                "description": clean_description(raw), "raw": raw, "model": None, "adapter": None,
                "sample": n // len(templates) if fits else n, "seed": None, "prompt_format": None,
            })
    return records


# --- the stage ------------------------------------------------------------------------------


def load_concepts(config: GenerateConfig) -> list[str]:
    from ex2.data import concept_names

    concepts = concept_names(config.concepts) if config.concepts else concept_names(config.dataset, config.data_root)
    return concepts[: config.limit_concepts] if config.limit_concepts else concepts


def write_outputs(config: GenerateConfig, output: Path, records: list[dict]) -> Path:
    write_jsonl(output, records)
    if config.legacy_json:
        write_json(config.legacy_json, legacy_view(records))
    save_config(config, output.parent, name=output.name + ".config.yaml")
    return output


def convert(config: GenerateConfig) -> Path:
    """``--from-legacy``: EX2's JSON into our JSONL, sampling nothing."""
    from ex2.data import load_templates

    records = from_legacy(config.from_legacy, load_templates(config.templates), lambda: load_concepts(config))
    return write_outputs(config, Path(config.output), records)


def make_sampler(config: GenerateConfig, adapter: Path | None):
    from ex2.samplers import SamplingSettings, load_sampler

    sampling = SamplingSettings(config.max_new_tokens, config.temperature, config.top_p, config.top_k)
    options = {"device": config.device, "dtype": config.dtype, "merge_adapter": config.merge_adapter,
               "batch_size": config.batch_size}
    if config.sampler == "vllm":
        options["seed"] = config.seed
    return load_sampler(config.sampler, config.llm, adapter, sampling, **options)


def generate(config: GenerateConfig) -> Path:
    """Sample every missing description, then write the output files atomically."""
    from ex2.data import load_templates
    from ex2.llm import load_tokenizer
    from ex2.samplers import resolve_adapter

    output = Path(config.output)
    jobs = plan_jobs(load_concepts(config), load_templates(config.templates), config.samples_per_template)
    adapter = resolve_adapter(config.adapter) if config.adapter else None
    settings = run_settings(config, adapter, resolve_prompt_format(load_tokenizer(config.llm), config.prompt_format))
    partial = partial_path(output)
    done = {(r["concept"], r["template"], r["sample"]) for r in load_partial(partial, settings)}
    todo = [job for job in jobs if job.key not in done]
    if todo:
        sampler = make_sampler(config, adapter)
        with tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="desc", desc="generate") as bar:
            for finished in sample_missing(sampler, todo, partial, settings, config.batch_size):
                bar.update(finished)
    records = ordered_records(jobs, read_jsonl(partial)[1:])
    write_outputs(dataclasses.replace(config, prompt_format=settings["prompt_format"]), output, records)
    partial.unlink()
    return output


def run(config: GenerateConfig) -> Path:
    """``ex2 generate``: the output JSONL file."""
    return convert(config) if config.from_legacy else generate(config)
