"""Description generation: ask an LLM (alone or with a LoRA adapter from ``ex2 train``) each query
template about each concept, and keep what it answers.

    ex2 generate --dataset samples --llm smollm2 --output runs/gen/descriptions.jsonl
    ex2 generate --dataset cub:/data/CUB_200_2011 --llm mistralai/Mistral-7B-v0.1 \\
        --adapter runs/train/cub --sampler vllm --output runs/gen/cub.jsonl --legacy-json runs/gen/cub.json
    ex2 generate --from-legacy inference_output.json --templates mult_template_v1.json \\
        --classnames pets_class_names.json --output runs/gen/pets.jsonl

One record per (concept, template, sample) goes to the JSONL output; a run that is killed resumes
from ``OUTPUT.partial`` and samples only what is missing.

The guarantee: the same settings (every option in ``RUN_SETTINGS``, ``--batch-size`` included) with
the same library versions on the same device give a byte-identical output file, however often the
run was killed (SIGKILL included) and resumed. Every record draws its random numbers from its own
seed (:func:`ex2.llm.samplers.record_seed`), and batches are fixed by record index (records ``[k*B, (k+1)*B)`` of the
plan form batch ``k``): a resumed run samples a batch that a kill left half written whole again and
keeps only its missing records, so every text comes from the same batch as in an uninterrupted run.
A different ``--batch-size`` may change a few texts (left padding shifts the logits slightly, enough
to flip a seeded draw now and then), so a partial file is resumed only with the batch size it began
with. One run writes an output at a time (``OUTPUT.lock``); temp files a killed run left beside the
output are removed by the next one.

EX2's own output format (``--legacy-json`` writes it, ``--from-legacy`` reads it) is what its
``inference.py`` dumps: a JSON list with one list per class (class-id order) of raw completions, in
template order (and sample order within a template). It names neither classes nor templates, so
reading it takes the template file and the class names it was made with.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from ex2.core.config import (
    ConfigError,
    classnames_option,
    data_root_option,
    dataset_option,
    llm_option,
    option,
    save_config,
)
from ex2.core.errors import OutputError
from ex2.core.io import (
    append_jsonl,
    check_output_path,
    output_lock,
    partial_path,
    read_jsonl,
    remove_stale_temps,
    resume_partial,
    write_json,
    write_jsonl,
)
from ex2.core.names import split_dataset_name
from ex2.core.text import clean_description
from ex2.data import concept_names, load_classnames, load_templates
from ex2.llm.models import format_prompt, load_tokenizer, resolve_prompt_format
from ex2.llm.samplers import encode_prompts, record_seed, resolve_adapter, sampler_for

RECORD_FIELDS = ("concept", "class_id", "template", "description", "raw", "model", "adapter",
                 "sample", "seed", "prompt_format")
# settings that change what is sampled; a partial file is resumed only when they match
RUN_SETTINGS = ("llm", "adapter", "sampler", "seed", "prompt_format", "max_new_tokens",
                "temperature", "top_p", "top_k", "batch_size", "device", "dtype", "merge_adapter")
DEFAULT_TEMPLATES = "describe25"


# --- config ---------------------------------------------------------------------------------


@dataclass
class GenerateConfig:
    """Sample descriptions of every concept from a base LLM or a base LLM plus a LoRA adapter."""

    dataset: str = dataset_option()
    data_root: str | None = data_root_option()
    concepts: str | None = option(None, "text file of concepts, one a line (used instead of --dataset)")
    templates: str | None = option(None, "query template set (describe25, clip, ...) or a file, one template with {} a "
                                         "line (default describe25; --from-legacy needs the one its file was made with)")
    classnames: str | None = classnames_option()
    llm: str = llm_option()
    adapter: str | None = option(None, "PEFT LoRA adapter folder, or an `ex2 train` run folder (its adapter/, "
                                       "else its latest checkpoint-N); none: the base model alone")
    sampler: Literal["transformers", "vllm"] = option("transformers", "transformers or vllm (CUDA: pip "
                                                      "install 'ex2[vllm]'; CPU: vLLM's CPU build, README: vLLM)")
    output: str = option("runs/generate/descriptions.jsonl", "output JSONL file, one description a line")
    samples_per_template: int = option(1, "descriptions sampled per (concept, template)")
    max_new_tokens: int = option(32, "most tokens generated per description")
    temperature: float = option(1.0, "sampling temperature; 0 means greedy")
    top_p: float = option(1.0, "nucleus sampling mass; 1.0 keeps every token")
    top_k: int = option(0, "sample among the k likeliest tokens; 0 means no top-k")
    seed: int = option(0, "random seed; the same seed gives the same file")
    batch_size: int = option(32, "prompts per generation batch")
    device: str | None = option(None, "torch device for the transformers sampler (default: cuda if available)")
    dtype: Literal["auto", "fast", "fp32", "fp16", "bf16"] = option(
        "auto", "model dtype (auto: bf16 on CUDA where supported, else fp16; fp32 on CPU; fast: bf16 also on CPUs "
        "that compute it natively)")
    merge_adapter: bool = option(False, "merge the adapter into the weights in memory (faster sampling)")
    prompt_format: Literal["auto", "base", "chat"] = option(
        "auto", "base: EX2's 'query\\n\\n'; chat: the tokenizer's chat template; auto: chat if it has one")
    limit_concepts: int | None = option(None, "only the first N concepts (quick runs)")
    legacy_json: str | None = option(None, "also write EX2's format: a JSON list, per class, of its raw completions")
    from_legacy: str | None = option(None, "convert an EX2 output (JSON, per class a list of completions) into "
                                           "--output with --templates and --classnames; samples nothing")

    def __post_init__(self) -> None:
        self.dataset, self.data_root = split_dataset_name(self.dataset, self.data_root)
        positive = {"samples_per_template": self.samples_per_template, "max_new_tokens": self.max_new_tokens,
                    "batch_size": self.batch_size}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        if self.limit_concepts is not None and self.limit_concepts < 1:
            raise ConfigError(f"--limit-concepts must be at least 1 (or left out), not {self.limit_concepts}")
        if not self.temperature >= 0:  # NaN too
            raise ConfigError(f"--temperature must be >= 0 (0 is greedy), not {self.temperature}")
        if not 0 < self.top_p <= 1:  # NaN too
            raise ConfigError(f"--top-p must be in (0, 1], not {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be >= 0 (0 turns top-k off), not {self.top_k}")
        if self.classnames and self.concepts:
            raise ConfigError("give --classnames or --concepts, not both: both name the concepts")
        if self.from_legacy and not self.templates:
            raise ConfigError("--from-legacy needs --templates: the template set or file the EX2 output was made "
                              "with (EX2's data_files/mult_template_v1.json for its own runs)")


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


def plan_jobs(concepts: list[str], templates: list[str], samples_per_template: int = 1) -> list[Job]:
    """Every (concept, template, sample), in output order."""
    return [Job(c, concept, t, template, s)
            for c, concept in enumerate(concepts)
            for t, template in enumerate(templates)
            for s in range(samples_per_template)]


# --- resumable sampling ---------------------------------------------------------------------


def run_settings(config: GenerateConfig, adapter: Path | None, prompt_format: str) -> dict[str, Any]:
    values = dataclasses.asdict(config) | {"adapter": str(adapter) if adapter else None,
                                           "prompt_format": prompt_format}
    return {name: values[name] for name in RUN_SETTINGS}


def make_record(job: Job, raw: str, prompt: str, special_tokens: list[str], settings: dict) -> dict:
    return {
        "concept": job.concept, "class_id": job.class_id, "template": job.template,
        "description": clean_description(raw, prompt=prompt, special_tokens=special_tokens), "raw": raw,
        "model": settings["llm"], "adapter": settings["adapter"], "sample": job.sample,
        "seed": settings["seed"], "prompt_format": settings["prompt_format"],
    }


def plan_batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """The batches of a run: records ``[k*batch_size, (k+1)*batch_size)`` of the plan, whatever is done."""
    return [jobs[start:start + batch_size] for start in range(0, len(jobs), batch_size)]


def sample_missing(sampler, jobs: list[Job], done: set[tuple], partial: Path, settings: dict,
                   batch_size: int) -> Iterator[int]:
    """Sample every batch that lacks a record, whole, and append its missing records to ``partial``
    (records already in ``done`` keep the text they have); yields how many were added."""
    tokenizer, fmt = sampler.tokenizer, settings["prompt_format"]
    special = list(getattr(tokenizer, "all_special_tokens", []))
    for batch in plan_batches(jobs, batch_size):
        if all(job.key in done for job in batch):
            continue
        prompts = [format_prompt(tokenizer, job.query, fmt) for job in batch]
        seeds = [record_seed(settings["seed"], *job.key) for job in batch]
        raws = sampler.generate(encode_prompts(tokenizer, prompts, fmt), seeds)
        added = 0
        for job, prompt, raw in zip(batch, prompts, raws, strict=True):
            if job.key not in done:
                append_jsonl(partial, make_record(job, raw, prompt, special, settings))
                added += 1
        yield added


def ordered_records(jobs: list[Job], records: Iterable[dict]) -> list[dict]:
    """Exactly one record per job, in job order (records of jobs no longer planned are dropped)."""
    by_key = {(r["concept"], r["template"], r["sample"]): r for r in records}
    return [by_key[job.key] for job in jobs]


def legacy_view(records: list[dict]) -> list[list[str]]:
    """EX2's format: one list per class (class-id order) of its raw completions, in record order."""
    by_class: dict[int, list[str]] = {}
    for record in records:
        by_class.setdefault(record["class_id"], []).append(record["raw"])
    return [by_class[class_id] for class_id in sorted(by_class)]


# --- EX2's format in ------------------------------------------------------------------------

Concepts = list[str] | Callable[[int], list[str]] | None  # class names, or how to get n of them when needed
LEGACY_EXPECTED = ("EX2's output: a list of completion lists, one per class (or a JSON object class name -> "
                   "list of descriptions)")


def read_legacy(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected {LEGACY_EXPECTED})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected {LEGACY_EXPECTED}") from err


def _legacy_classes(path: Path, data: Any, concepts: Concepts) -> list[tuple[str, list]]:
    if isinstance(data, dict):  # names its classes itself
        classes = list(data.items())
    elif isinstance(data, list) and concepts is not None:
        concepts = concepts(len(data)) if callable(concepts) else concepts
        if len(data) != len(concepts):
            raise ValueError(f"{path}: holds {len(data)} description lists but the concepts number "
                             f"{len(concepts)}; pass the --classnames (or --dataset) it was made for")
        classes = list(zip(concepts, data, strict=True))
    elif isinstance(data, list):
        raise ValueError(f"{path}: EX2's output names no classes; pass --classnames (or --dataset)")
    else:
        raise ValueError(f"{path}: expected {LEGACY_EXPECTED}")
    for name, completions in classes:
        if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
            raise ValueError(f"{path}: descriptions of {name!r} must be a list of strings; expected {LEGACY_EXPECTED}")
    return classes


def _check_counts(path: Path, classes: list[tuple[str, list]], templates: list[str], samples: int) -> None:
    expected = len(templates) * samples
    for class_id, (name, completions) in enumerate(classes):
        if len(completions) != expected:
            raise ValueError(
                f"{path}: class {class_id} ({name!r}) has {len(completions)} completions; expected "
                f"{len(templates)} templates x {samples} sample(s) = {expected}; pass the --templates and "
                "--samples-per-template the file was made with")


def from_legacy(path: str | Path, templates: list[str], concepts: Concepts = None,
                samples_per_template: int = 1) -> list[dict]:
    """Records from an EX2 output file, each labelled with the template it answered.

    A class's completions are in template order, ``samples_per_template`` per template (EX2: one),
    so every class must hold ``len(templates) * samples_per_template``. EX2's list of lists takes
    its class names from ``concepts`` (a list, or a function of the number of classes). ``raw`` is
    the completion untouched; ``description`` is it cleaned (:func:`clean_description`).
    """
    path = Path(path)
    classes = _legacy_classes(path, read_legacy(path), concepts)
    _check_counts(path, classes, templates, samples_per_template)
    return [
        {"concept": concept, "class_id": class_id, "template": templates[n // samples_per_template],
         "description": clean_description(raw), "raw": raw, "model": None, "adapter": None,
         "sample": n % samples_per_template, "seed": None, "prompt_format": None}
        for class_id, (concept, completions) in enumerate(classes)
        for n, raw in enumerate(completions)
    ]


# --- the stage ------------------------------------------------------------------------------


def load_concepts(config: GenerateConfig, expected: int | None = None) -> list[str]:
    """The concept names: ``--classnames`` (checked against ``expected`` classes, else against the
    dataset's), ``--concepts`` or the dataset's class names; the first ``--limit-concepts`` of them."""
    if config.classnames:
        where = "the EX2 output" if expected is not None else f"dataset {config.dataset}"
        count = expected if expected is not None else len(concept_names(config.dataset, config.data_root))
        concepts = load_classnames(config.classnames, count, where)
    elif config.concepts:
        concepts = concept_names(config.concepts)
    else:
        concepts = concept_names(config.dataset, config.data_root)
    return concepts[: config.limit_concepts] if config.limit_concepts else concepts


def check_outputs(config: GenerateConfig) -> Path:
    """The output path, checked (with ``--legacy-json``) before anything is read or loaded."""
    output = check_output_path(config.output)
    if config.legacy_json:
        legacy = check_output_path(config.legacy_json, flag="--legacy-json")
        if legacy.resolve() in (output.resolve(), config_path(output).resolve()):
            raise OutputError(f"--legacy-json {config.legacy_json} is the same file as --output (or its config): "
                              "EX2's JSON would overwrite the JSONL records; give it another name")
    return output


def config_path(output: Path) -> Path:
    return output.with_name(output.name + ".config.yaml")


def write_outputs(config: GenerateConfig, output: Path, records: list[dict]) -> Path:
    write_jsonl(output, records)
    if config.legacy_json:
        write_json(config.legacy_json, legacy_view(records))
    save_config(config, output.parent, name=config_path(output).name)
    return output


def convert(config: GenerateConfig) -> Path:
    """``--from-legacy``: EX2's JSON into our JSONL, sampling nothing."""
    output = check_outputs(config)
    templates = load_templates(config.templates)
    records = from_legacy(config.from_legacy, templates, lambda n: load_concepts(config, n),
                          config.samples_per_template)
    with output_lock(output, "ex2 generate --from-legacy"):
        return write_outputs(config, output, records)


def generate(config: GenerateConfig) -> Path:
    """Sample every missing description, then write the output files atomically."""
    output = check_outputs(config)
    with output_lock(output, "ex2 generate"):
        for path in (output, partial_path(output), config_path(output), config.legacy_json):
            if path:
                remove_stale_temps(path)  # left by a run killed while writing them
        return _generate(config, output)


def _generate(config: GenerateConfig, output: Path) -> Path:
    templates = load_templates(config.templates or DEFAULT_TEMPLATES)
    jobs = plan_jobs(load_concepts(config), templates, config.samples_per_template)
    adapter = resolve_adapter(config.adapter) if config.adapter else None
    settings = run_settings(config, adapter, resolve_prompt_format(load_tokenizer(config.llm), config.prompt_format))
    partial = partial_path(output)
    resumed = resume_partial(partial, settings, "partial descriptions", RECORD_FIELDS)
    done = {(r["concept"], r["template"], r["sample"]) for r in resumed}
    todo = [job for job in jobs if job.key not in done]
    if todo:
        sampler = sampler_for(config, adapter)
        with tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="desc", desc="generate") as bar:
            for added in sample_missing(sampler, jobs, done, partial, settings, config.batch_size):
                bar.update(added)
    records = ordered_records(jobs, read_jsonl(partial)[1:])
    resolved = dataclasses.replace(config, prompt_format=settings["prompt_format"],
                                   templates=config.templates or DEFAULT_TEMPLATES)
    write_outputs(resolved, output, records)
    partial.unlink()
    return output


def run(config: GenerateConfig) -> Path:
    """``ex2 generate``: the output JSONL file."""
    return convert(config) if config.from_legacy else generate(config)
