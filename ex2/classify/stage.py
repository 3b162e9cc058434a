"""Zero-shot classification with class names or descriptions: ``ex2 classify``.

    ex2 classify --dataset samples --vlm conse --method clip --output runs/clip
    ex2 classify --method clip --templates clip_ensemble --output runs/ens
    ex2 classify --method dclip --descriptions descriptors_cub.json --dataset cub --data-root DIR ...
    ex2 classify --method ex2 --descriptions runs/gen/descriptions.jsonl --categories visual ...
    ex2 classify --method cupl --cupl-mode both --descriptions flower_prompts_base.json --dataset flowers102 ...
    ex2 classify --method waffle --descriptions descriptors_cars.json --waffle-words word_list.txt ...
    ex2 classify --method waffle --waffle-kind words --output runs/waffle     (ex2's own random texts)

Image and text embeddings come from the on-disk caches (:func:`ex2.vlm.embed_images`,
:func:`ex2.vlm.embed_texts`; ``--no-cache`` turns both off), every distinct text encoded once;
the classifier is a ``[D, C]`` matrix built by the pure functions of :mod:`ex2.classify.zeroshot`, and
scoring is one matrix product. The run folder holds
``metrics.json`` (fixed keys, rolled up by ``ex2 report``), per-class accuracy and the confusion
matrix as CSV and PNG, ``predictions.csv``, ``class_texts.json``, the resolved ``config.yaml``
and, with ``--explain``, one figure per explained image. Inputs (dataset, descriptions, templates,
word list) are checked and the model scores the images before anything is written, so a refused
or failed run leaves no folder behind and never touches an older run's files.

The peers' methods build their texts by the peers' own rules from the peers' own files:
``dclip`` (Menon & Vondrick) "{class}, which (is/has) {descriptor}" with "." on ImageNet, the
class named as the file's key; ``cupl`` (Pratt et al.) the normalised mean of all prompt
embeddings, repeats counted, optionally pooled with CLIP's 80 templates; ``waffle`` with a
descriptor file (Roth et al.'s WaffleCLIP) their seeded random words and characters, 7 seeds.
A description file's keys match the classes by name (case, spaces, hyphens and underscores
ignored) or, for a JSON file in the dataset's class order, by position as DCLIP does; keys of
classes the dataset lacks are reported and left unused.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Literal

import torch

from ex2.classify import zeroshot
from ex2.core.config import (
    TEXT_FIELDS,
    classnames_option,
    data_root_option,
    dataset_option,
    option,
    save_config,
    split_option,
    text_field_option,
    vlm_option,
)
from ex2.core.intervals import classification_intervals, mean_std
from ex2.core.io import atomic_open, check_output_path, read_jsonl, write_json
from ex2.core.names import split_dataset_name
from ex2.core.taxonomy import FILTER_CATEGORIES
from ex2.core.text import record_text, resolve_text_field

METHODS = ("clip", "dclip", "cupl", "ex2", "waffle", "coder")
DEFAULT_AGGREGATE = {
    "clip": "mean_embedding", "dclip": "mean_score", "cupl": "mean_embedding", "ex2": "mean_score",
    "waffle": "mean_score", "coder": "mean_score",
}
DESCRIPTION_METHODS = ("dclip", "cupl", "ex2")  # need --descriptions
DCLIP_SUFFIX = {"imagenet": "."}  # DCLIP's after_text per dataset (its load.py); "" elsewhere
CUPL_TEMPLATES = "clip_80"  # CLIP's 80 ImageNet templates, the ones CuPL pools with
WAFFLECLIP_PREFIX = "A photo of a "  # WaffleCLIP's label_before_text
# generative VLMs (--vlm gen:…) answer or score class names instead: ex2.classify.generative
GVLM_METHODS = ("open", "closed", "likelihood")
DEFAULT_AGGREGATE.update(dict.fromkeys(GVLM_METHODS, "mean_score"))  # unused by them


@dataclass
class ClassifyConfig:
    """Zero-shot classification with class names (CLIP) or descriptions (DCLIP, CuPL, EX2, WaffleCLIP)."""

    dataset: str = dataset_option()
    data_root: str | None = data_root_option()
    split: str | None = split_option()
    classnames: str | None = classnames_option()
    text_field: Literal[TEXT_FIELDS] = text_field_option()
    vlm: str = vlm_option()
    device: str | None = option(None, "torch device; default: CUDA when available")
    precision: str = option("auto", "fp32, fp16, bf16 or auto (bf16 on CUDA where supported, else fp16; fp32 on CPU)")
    method: Literal["clip", "dclip", "cupl", "ex2", "waffle", "coder", "open", "closed", "likelihood"] = option(
        "clip", "how each class's texts are made; open, closed or likelihood with a generative VLM (gen:…)"
    )
    templates: str = option("clip", "class-name templates for clip: clip, clip_ensemble or a file")
    descriptions: str | None = option(
        None, "dclip/cupl/ex2: descriptions.jsonl or categories.jsonl (ours), or a JSON {class: [texts]} "
        "(DCLIP's, CuPL's, WaffleCLIP's); waffle: a descriptor file makes it WaffleCLIP's (characters, class keys)"
    )
    categories: list[str] = option(
        [], "ex2: keep only descriptions of these inspection categories (spurious, visual, non_visual, "
        "informative; several allowed, comma-separated too); read from categories.jsonl"
    )
    description_format: str | None = option(
        None, "ex2 only: text made of each description ({description} and {class} are filled in; default "
        "{description}); dclip, cupl and waffle write their authors' texts and refuse it"
    )
    aggregate: Literal["mean_score", "mean_embedding"] | None = option(
        None, "pool a class's texts: mean of scores (DCLIP) or normalised mean embedding; "
        "default mean_embedding for clip, mean_score otherwise"
    )
    allow_missing: bool = option(False, "a class left without descriptions falls back to its name alone")
    waffle_kind: Literal["words", "chars", "both"] = option("both", "waffle: random words, characters or both")
    waffle_count: int = option(15, "waffle: random descriptors of each kind per class")
    waffle_seeds: int = option(7, "waffle: seeds to average accuracy over (WaffleCLIP: 7; spread is np.std, ddof 0)")
    waffle_words: str | None = option(
        None, "waffle: word list, one entry a line (with --descriptions read as is, like WaffleCLIP's "
        "word_list.pkl as text; else blank and # lines skipped); default: ex2's shipped list"
    )
    waffle_prefix: str = option(WAFFLECLIP_PREFIX, "waffle: text before the class name (WaffleCLIP's label_before_text)")
    waffle_concept: str | None = option(
        None, "waffle: WaffleCLIP's concept guidance, e.g. bird: the prefix becomes 'A photo of a bird: a '"
    )
    cupl_mode: Literal["prompts", "both"] = option(
        "prompts", "cupl: the prompts alone, or both: pooled with class-name templates in one mean (CuPL's use_both)"
    )
    cupl_templates: str = option(
        CUPL_TEMPLATES, "cupl both: class-name templates (default clip_80, CLIP's 80, as CuPL), a set or a file"
    )
    seed: int = option(0, "first waffle seed")
    seeds: int | None = option(
        None, "waffle: draw its random texts N times from --seed on and report mean ± std (the same as "
        "--waffle-seeds); other methods refuse N > 1"
    )
    strict: bool = option(False, "stop at an unreadable image instead of skipping it")
    drop_unreadable_classes: bool = option(
        False, "a class none of whose images can be read is left out of the scores (listed in metrics.json "
        "as dropped_classes) instead of stopping the run"
    )
    batch_size: int = option(32, "images per forward pass")
    cache: bool = option(True, "reuse and fill the on-disk caches of image and text embeddings")
    explain: int = option(0, "write explanation figures for this many images (0: none)")
    explain_misclassified: bool = option(False, "explain misclassified images (up to --explain, default 20)")
    explain_top: int = option(5, "descriptors shown per class in an explanation")
    progress: bool = option(True, "show progress bars")
    output: str = option("runs/classify", "run folder to write")
    knowledge: str | None = option(None, "coder: knowledge.jsonl written by `ex2 knowledge`, or CoDer's released "
                                   "expert_knowledge folder (default with --coder-dir: CLONE/expert_knowledge)")
    kinds: list[str] | None = option(None, "coder: knowledge kinds in the class texts (attributes, analogous, "
                                     "synonyms); default CoDer's: all three zero-shot, attributes,analogous few-shot")
    coder_dir: str | None = option(None, "coder: a clone of YCaigogogo/CODER: its templates (CODER/template.py, read "
                                   "as data), class lists, re-ranking gaps and expert_knowledge; default ex2's texts")
    coder_dataset: str | None = option(None, "coder: CoDer's name for the dataset (e.g. oxford-pet, DTD, food-101); "
                                       "default mapped from --dataset")
    coder_star: bool = option(False, "coder: CODER*: re-rank with one-vs-one texts below CoDer's per-dataset gap "
                                     "(utils.py); needs --coder-dir")
    coder_synonyms: Literal["filled", "as-run"] = option(
        "filled", "coder: synonym texts with the synonym (filled), or as CoDer's released code makes them (as-run: "
        "its call leaves the field None, 'a photo of None')")
    ovo_rows: Literal["gap", "gap-and-label-in-top5"] = option(
        "gap", "coder: rows re-ranked: every small gap (ours), or also only where the true class is in the top five "
        "(CoDer's loop; reads the test labels)")
    ovo_gap: float = option(0.0, "coder: re-rank with one-vs-one texts where the top-2 softmax gap is below this")
    ovo_top: int = option(5, "coder: classes re-ranked by one-vs-one texts")
    shots: int = option(0, "coder: labelled images per class for Tip-Adapter over neighbor vectors (0: zero-shot)")
    val_shots: int | None = option(None, "coder: validation images per class for alpha/beta (default min(shots, 4))")
    support_split: str | None = option(None, "coder: split the shots come from; default: carved from the "
                                             "evaluated split and left out of the test images")
    augment_views: int = option(10, "coder: random crop/flip views averaged per support image")
    # generative VLMs (--vlm gen:…, --method open|closed|likelihood): see ex2.classify.generative
    question: str = option("What type of object is in this photo?", "open/closed/likelihood: the question asked")
    classnames: str | None = option(
        None, "open/closed: class names and synonyms that count as naming a class: JSON {class: [synonym, ...]} "
        "or one class a line, 'class, synonym, ...'"
    )
    n_choices: str = option("all", "closed: list all classes, or N (the true one and N-1 others, shuffled by --seed)")
    choice_order: Literal["shuffled", "fixed"] = option(
        "shuffled", "closed: shuffled per image, drawn as VLMClassifier's main.py (its seed: 1234), or fixed: "
        "every class in dataset order (its label-order ablation)")
    answer_match: Literal["substring", "words"] = option(
        "substring", "open/closed: substring (VLMClassifier's eval.ipynb: a true class name inside the answer, any "
        "case) or words (ours: whole words, and a closed answer naming another choice too is wrong)")
    prompt_format: Literal["auto", "chat", "vlmclassifier"] = option(
        "auto", "open/closed/likelihood: vlmclassifier (LLaVA-1.5's 'USER: <image>\\n{question}\\nASSISTANT:' as "
        "VLMClassifier's main.py), chat (ours: the processor's chat template), auto (vlmclassifier for llava models)")
    answer_prefix: str = option("The photo features a", "likelihood: the answer's start, continued by each class name "
                                "(VLMClassifier's inference_analysis/main.py; ex2 used 'This is a photo of a')")
    length_norm: Literal["mean", "sum"] = option("mean", "likelihood: mean (length-normalised) or sum of token log-probs")
    calibrate: bool = option(False, "likelihood: divide out the class prior estimated on held-out images")
    calibration_split: str | None = option(
        None, "likelihood: split estimating the prior; default: hold out --calibration-fraction of the evaluated split"
    )
    calibration_fraction: float = option(0.2, "likelihood: share of each class's images held out for the prior")
    max_new_tokens: int = option(64, "open/closed: answer length limit in tokens")
    gen_backend: Literal["transformers", "vllm"] = option(
        "transformers", "open/closed: generate with transformers or vLLM (GPU, pip install 'ex2[vllm]')"
    )

    def __post_init__(self) -> None:
        self.dataset, self.data_root = split_dataset_name(self.dataset, self.data_root)
        self.categories = [c.strip() for item in self.categories for c in item.split(",") if c.strip()]
        unknown = sorted(set(self.categories) - set(FILTER_CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categories {', '.join(unknown)}; choose from {', '.join(FILTER_CATEGORIES)}")
        if self.method in DESCRIPTION_METHODS and not self.descriptions:
            raise ValueError(f"--method {self.method} needs --descriptions FILE (descriptions.jsonl or JSON)")
        if self.categories and self.method != "ex2":
            raise ValueError("--categories filters generated descriptions; use it with --method ex2")
        if self.description_format is not None and self.method != "ex2":
            raise ValueError(
                f"--description-format shapes --method ex2's texts; --method {self.method} writes its authors' "
                "own texts and would ignore it (use --method ex2 for texts of your own shape)"
            )
        if self.text_field not in TEXT_FIELDS:
            raise ValueError(f"--text-field must be one of {', '.join(TEXT_FIELDS)}, got {self.text_field!r}")
        if self.method != "ex2":
            if self.text_field == "raw":
                raise ValueError("--text-field raw picks the text of generated records; use it with --method ex2")
            self.text_field = "description"  # the other methods read descriptor texts as their authors wrote them
        if self.method == "ex2" and self.description_format is None:
            self.description_format = "{description}"
        if self.description_format is not None:
            try:
                self.description_format.format(**{"description": "", "class": ""})
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(
                    f"--description-format {self.description_format!r}: only {{description}} and {{class}} are "
                    f"filled in ({err!r}); write literal braces as {{{{ and }}}}") from err
        if self.waffle_concept is not None:
            if self.waffle_prefix != WAFFLECLIP_PREFIX:
                raise ValueError("give --waffle-concept or --waffle-prefix, not both (the concept sets the prefix)")
            self.waffle_prefix = f"A photo of a {self.waffle_concept}: a "
        self._apply_seeds()
        for name in ("waffle_count", "waffle_seeds", "batch_size", "explain_top"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.explain < 0:
            raise ValueError(f"--explain must be 0 or more, got {self.explain}")
        if self.aggregate is None:
            self.aggregate = DEFAULT_AGGREGATE[self.method]
        if self.method in GVLM_METHODS or self.vlm.strip().startswith("gen:"):
            from ex2.classify.generative import check_config

            check_config(self)
        from ex2.classify.coder import check_config

        check_config(self)

    def _apply_seeds(self) -> None:
        """``--seeds N``: waffle draws N text sets; other methods run once per ``--seed``."""
        if self.seeds is None:
            return
        if self.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {self.seeds}")
        if self.method == "waffle":
            self.waffle_seeds = self.seeds
        elif self.seeds > 1:
            raise ValueError(f"--seeds {self.seeds} repeats waffle's random draws; --method {self.method} draws "
                             "nothing at random or is not repeated by --seeds: run it once per --seed S instead")


# --- descriptions ------------------------------------------------------------------------------


@dataclass
class Descriptions:
    """Texts per concept as named in the file, in its order (filtered concepts keep an empty list).

    A JSON file's lists are kept exactly as written (repeats and empty strings included: CuPL
    weighs repeated prompts, DCLIP scores an empty list); our JSONL's texts are stripped and
    deduplicated. ``--method ex2`` drops repeats of either when it builds its texts.
    """

    by_concept: dict[str, list[str]]
    provenance: dict = field(default_factory=dict)  # source file, its model(s), adapter(s)


def _one_or_many(values: list) -> object:
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    return distinct[0] if len(distinct) == 1 else (distinct or None)


def _read_descriptor_json(path: Path) -> dict[str, list[str]]:
    """DCLIP's form: ``{class: [descriptor, ...]}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected {{class: [descriptor, ...]}}") from err
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(d, str) for d in v) for v in data.values()
    ):
        raise ValueError(f"{path}: expected a JSON object mapping each class to a list of descriptor strings")
    return {str(k): list(v) for k, v in data.items()}


def _category_records(path: Path) -> list[dict]:
    """Records carrying inspection labels: ``path`` itself or its sibling categories.jsonl."""
    records = read_jsonl(path, required=("concept", "description"))
    if all("category" in r for r in records):
        return records
    sibling = path.with_name("categories.jsonl")
    if sibling != path and sibling.is_file():
        return read_jsonl(sibling, required=("concept", "description", "category"))
    raise ValueError(
        f"{path}: records lack the 'category' field needed by --categories; pass the categories.jsonl "
        "written by `ex2 inspect` as --descriptions"
    )


def _keep(record: dict, categories: list[str]) -> bool:
    wanted = set(categories)
    return record.get("category") in wanted or ("informative" in wanted and bool(record.get("informative")))


def adapter_vlm(adapter: str | None) -> str | None:
    """The VLM an adapter was aligned against, from the config.yaml of its training run (the
    adapter folder or one of its two parents); None when unknown."""
    if not adapter:
        return None
    folder = Path(adapter)
    for candidate in (folder, *list(folder.parents)[:2]):
        config = candidate / "config.yaml"
        if config.is_file():
            import yaml

            try:
                data = yaml.safe_load(config.read_text())
            except yaml.YAMLError:
                return None
            return data.get("vlm") if isinstance(data, dict) else None
    return None


def load_descriptions(path: str | Path, categories: list[str] | tuple = (),
                      text_field: str = "auto") -> Descriptions:
    """Descriptions per concept from our JSONL (optionally filtered by inspection category; the
    records' ``text_field``: raw, description or auto, :func:`ex2.core.text.resolve_text_field`) or from a
    JSON ``{class: [texts]}`` (DCLIP's, CuPL's, WaffleCLIP's), kept as written."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"descriptions file {path} does not exist (expected .jsonl or .json)")
    provenance: dict = {"path": str(path.resolve())}
    if path.suffix == ".json":
        if categories:
            raise ValueError(f"{path}: a JSON descriptor file has no inspection categories; pass categories.jsonl")
        if text_field == "raw":
            raise ValueError(f"{path}: a JSON descriptor file has no raw completions; use --text-field description")
        by_concept = _read_descriptor_json(path)
        provenance.update(format="dclip_json", model=None, adapter=None, text_field="description")
    else:
        records = _category_records(path) if categories else read_jsonl(path, required=("concept", "description"))
        text_field = resolve_text_field(records, text_field, path)
        by_concept = {}
        for record in records:
            texts = by_concept.setdefault(str(record["concept"]), [])
            text = record_text(record, text_field, path)
            if (not categories or _keep(record, categories)) and text:
                texts.append(text)
        provenance.update(
            format="jsonl", n_records=len(records), text_field=text_field,
            model=_one_or_many([r.get("model") for r in records]),
            adapter=_one_or_many([r.get("adapter") for r in records]),
        )
        aligned = _one_or_many([r.get("vlm") or r.get("reward_vlm") for r in records])
        aligned = aligned or _one_or_many([adapter_vlm(r.get("adapter")) for r in records])
        if aligned:
            provenance["aligned_vlm"] = aligned
        by_concept = {k: list(dict.fromkeys(v)) for k, v in by_concept.items()}
    return Descriptions(by_concept, provenance)


@dataclass
class Alignment:
    """A description file's texts per dataset class, and how its keys were matched."""

    texts: list[list[str]]  # per class: the texts of its key(s), as the file has them
    keys: list[str | None]  # per class: the file's key that named it (None: no key did)
    unused: list[str]  # keys that name no class of the dataset
    by_position: bool  # matched in the dataset's class order, as DCLIP does
    source: str = "descriptions"
    renamed: list[tuple[str, int]] = field(default_factory=list)  # (key, class id) whose names differ
    n_keys: int = 0  # keys in the file


def _listed(items: list[str], limit: int = 10) -> str:
    return ", ".join(repr(c) for c in items[:limit]) + (" …" if len(items) > limit else "")


def align(
    classnames: list[str], descriptions: Descriptions, source: str = "descriptions", by_position: bool | None = None
) -> Alignment:
    """Texts per class id from the file's keys (:func:`ex2.classify.zeroshot.match_classes`): by name, or
    by position for a JSON file whose keys are in the dataset's class order (``by_position``
    None: only for JSON files, the peers' form)."""
    if by_position is None:
        by_position = descriptions.provenance.get("format") == "dclip_json"
    keys = list(descriptions.by_concept)
    match = zeroshot.match_classes(classnames, keys, by_position)
    texts = [[t for k in ks for t in descriptions.by_concept[keys[k]]] for ks in match.keys_of]
    names = [keys[ks[0]] if ks else None for ks in match.keys_of]
    renamed = [(k, i) for i, k in enumerate(names)
               if k is not None and zeroshot.normalise_name(k) != zeroshot.normalise_name(classnames[i])]
    return Alignment(texts, names, [keys[k] for k in match.unused], match.by_position, source, renamed, len(keys))


def check_coverage(alignment: Alignment, classnames: list[str], missing: list[int], allow_missing: bool) -> list[str]:
    """Names of the classes in ``missing``; an error unless ``allow_missing``, naming the keys
    that matched no class (often the same classes spelled otherwise)."""
    names = [classnames[i] for i in missing]
    if names and not allow_missing:
        unused = (f"; {len(alignment.unused)} concept(s) match no class of the dataset: {_listed(alignment.unused)}"
                  if alignment.unused else "")
        raise ValueError(
            f"{alignment.source}: {len(names)} class(es) have no descriptions (after filtering): "
            f"{', '.join(names[:10])}{' …' if len(names) > 10 else ''}{unused}; pass --allow-missing to "
            "use the class name alone for them"
        )
    return names


def align_descriptions(
    classnames: list[str], descriptions: Descriptions, allow_missing: bool = False, source: str = "descriptions"
) -> tuple[list[list[str]], list[str]]:
    """Distinct texts per class id (concepts matched to class names ignoring case, spaces, hyphens
    and underscores; a JSON file in class order by position); keys of other classes are left.

    A class without texts is an error, or with ``allow_missing`` gets an empty list (the caller
    substitutes the class name). Returns (texts per class, names of classes without descriptions).
    """
    alignment = align(classnames, descriptions, source)
    texts = [list(dict.fromkeys(t)) for t in alignment.texts]
    missing = check_coverage(alignment, classnames, [i for i, t in enumerate(texts) if not t], allow_missing)
    return texts, missing


def describe_alignment(alignment: Alignment, classnames: list[str]) -> tuple[list[str], dict]:
    """What the matching did, as log lines and a metrics entry."""
    lines = []
    matched = sum(k is not None for k in alignment.keys)
    renamed = alignment.renamed
    if alignment.by_position:
        example = f", e.g. key {renamed[0][0]!r} for class {classnames[renamed[0][1]]!r}" if renamed else ""
        lines.append(f"{alignment.source}: its {matched} keys are in the dataset's class order: matched by "
                     f"position, as DCLIP does ({len(renamed)} named otherwise than the dataset{example})")
    if alignment.unused:
        lines.append(f"{alignment.source}: {len(alignment.unused)} of {alignment.n_keys} keys name "
                     f"no class of this dataset and are unused: {_listed(alignment.unused, 5)}")
    info = {"matched_classes": matched, "unused_keys": len(alignment.unused), "by_position": alignment.by_position,
            "named_otherwise": len(renamed)}
    return lines, info


# --- class texts per method --------------------------------------------------------------------


def waffle_vocabulary(path: str | Path | None = None) -> list[str]:
    """Words for ex2's own random descriptors: a file (one word a line) or the shipped list."""
    if path is None:
        text = resources.files("ex2.resources").joinpath("waffle_words.txt").read_text(encoding="utf-8")
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"waffle word list {path} does not exist (expected one word a line)")
        text = path.read_text(encoding="utf-8")
    words = [w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#")]
    if not words:
        raise ValueError(f"waffle word list {path or 'waffle_words.txt'} holds no words")
    return words


def waffleclip_word_list(path: str | Path | None) -> list[str]:
    """WaffleCLIP's word list: one entry a line, in order, kept as written (its first entry is
    the empty string, so its first line is empty); without a file, ex2's shipped words."""
    if path is None:
        return waffle_vocabulary()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"waffle word list {path} does not exist (expected one entry a line)")
    entries = path.read_text(encoding="utf-8").split("\n")
    entries = [e.removesuffix("\r") for e in (entries[:-1] if entries[-1] == "" else entries)]
    if not any(entries):
        raise ValueError(f"waffle word list {path} holds no words")
    return entries


def _format_texts(config: ClassifyConfig, classnames: list[str], per_class: list[list[str]]) -> list[list[str]]:
    return [
        [config.description_format.format(**{"description": d, "class": name}) for d in dict.fromkeys(texts)]
        for name, texts in zip(classnames, per_class, strict=True)
    ]


def _dclip_texts(config: ClassifyConfig, classnames: list[str], alignment: Alignment, info: dict, lines: list[str]):
    """DCLIP's strings, the class named as the file's key; a key with an empty list is scored
    with the empty descriptor, as DCLIP's loader does. Returns (texts, classes without a key)."""
    keyless = [i for i, k in enumerate(alignment.keys) if k is None]
    missing = check_coverage(alignment, classnames, keyless, config.allow_missing)
    suffix = DCLIP_SUFFIX.get(config.dataset, "")
    names = [zeroshot.dclip_name(k) if k is not None else c for k, c in zip(alignment.keys, classnames, strict=True)]
    texts = zeroshot.dclip_texts(names, alignment.texts, suffix)
    texts = [t if k is not None else [] for t, k in zip(texts, alignment.keys, strict=True)]
    empty = [classnames[i] for i, (t, k) in enumerate(zip(alignment.texts, alignment.keys, strict=True))
             if k is not None and not t]
    if empty:
        lines.append(f"{config.descriptions}: {len(empty)} class(es) have an empty descriptor list and are "
                     f"scored with the empty descriptor, as DCLIP does: {', '.join(empty[:5])}")
    info["dclip"] = {"suffix": suffix, "classes_with_empty_list": len(empty), "class_names": "file keys"}
    return texts, missing


def _cupl_texts(config: ClassifyConfig, classnames: list[str], alignment: Alignment, info: dict, lines: list[str]):
    """CuPL's prompts, repeats kept; with ``--cupl-mode both`` after the templates filled with
    the file's key. Returns (texts, classes without prompts)."""
    from ex2.data import load_templates

    empty = [i for i, t in enumerate(alignment.texts) if not t]
    missing = check_coverage(alignment, classnames, empty, config.allow_missing)
    templates = load_templates(config.cupl_templates) if config.cupl_mode == "both" else []
    names = [k if k is not None else c for k, c in zip(alignment.keys, classnames, strict=True)]
    texts = zeroshot.cupl_texts(names, alignment.texts, templates)
    texts = [t if p else [] for t, p in zip(texts, alignment.texts, strict=True)]
    prompts = sum(len(t) for t in alignment.texts)
    repeats = prompts - sum(len(set(t)) for t in alignment.texts)
    info["cupl"] = {"mode": config.cupl_mode, "prompts": prompts, "repeated_prompts": repeats,
                    "templates": config.cupl_templates if templates else None, "n_templates": len(templates)}
    lines.append(f"{config.descriptions}: CuPL {config.cupl_mode}: {prompts} prompts ({repeats} repeats, each "
                 "counted)" + (f" pooled with {len(templates)} templates" if templates else ""))
    return texts, missing


def _description_texts(config: ClassifyConfig, classnames: list[str]) -> tuple[list[list[str]], dict, list[str]]:
    descriptions = load_descriptions(config.descriptions, config.categories, config.text_field)
    alignment = align(classnames, descriptions, config.descriptions)
    lines, match_info = describe_alignment(alignment, classnames)
    info: dict = {"descriptions": descriptions.provenance, "class_match": match_info}
    if config.method == "dclip":
        texts, missing = _dclip_texts(config, classnames, alignment, info, lines)
    elif config.method == "cupl":
        texts, missing = _cupl_texts(config, classnames, alignment, info, lines)
    else:
        per_class = [list(dict.fromkeys(t)) for t in alignment.texts]
        missing = check_coverage(alignment, classnames, [i for i, t in enumerate(per_class) if not t],
                                 config.allow_missing)
        texts = _format_texts(config, classnames, per_class)
    texts = [t if t else [name] for t, name in zip(texts, classnames, strict=True)]
    info["classes_without_descriptions"] = missing
    return texts, info, lines


def _waffle_sets(config: ClassifyConfig, classnames: list[str]) -> tuple[list[list[list[str]]], dict, list[str]]:
    """WaffleCLIP's texts (with a descriptor file) or ex2's own random texts (without), per seed."""
    seeds = list(range(config.seed, config.seed + config.waffle_seeds))
    info = {"kind": config.waffle_kind, "count": config.waffle_count, "seeds": seeds, "prefix": config.waffle_prefix,
            "word_list": str(Path(config.waffle_words).resolve()) if config.waffle_words else "ex2 (shipped)"}
    if not config.descriptions:
        words = waffle_vocabulary(config.waffle_words)
        sets = [zeroshot.waffle_texts(classnames, config.waffle_kind, config.waffle_count, s, words,
                                      config.waffle_prefix) for s in seeds]
        return sets, {"waffle": {**info, "generator": "ex2"}}, []
    return _waffleclip_sets(config, classnames, seeds, info)


def _waffleclip_sets(config: ClassifyConfig, classnames: list[str], seeds: list[int], info: dict):
    """WaffleCLIP's own draws from its descriptor file and word list, one text set per seed."""
    if config.waffle_kind == "words":
        raise ValueError("WaffleCLIP draws words and characters (--waffle-kind both) or characters alone (chars); "
                         "--waffle-kind words is ex2's own variant: drop --descriptions for it")
    descriptions = load_descriptions(config.descriptions)
    alignment = align(classnames, descriptions, config.descriptions)
    lines, match_info = describe_alignment(alignment, classnames)
    missing = check_coverage(alignment, classnames, [i for i, k in enumerate(alignment.keys) if k is None],
                             config.allow_missing)
    words = waffleclip_word_list(config.waffle_words)
    keys = list(descriptions.by_concept)
    texts = [t for v in descriptions.by_concept.values() for t in (v or [""])]
    names = [zeroshot.dclip_name(k) if k is not None else c for k, c in zip(alignment.keys, classnames, strict=True)]
    sets = []
    for seed in seeds:
        shared, drawn_for = zeroshot.waffleclip_texts(keys, texts, words, config.waffle_count, seed,
                                                      config.waffle_kind, config.waffle_prefix)
        sets.append(zeroshot.waffleclip_class_texts(shared, drawn_for, names))
    shape = zeroshot.waffleclip_shape(keys)
    info.update(generator="waffleclip", shape=shape, alphabet="".join(zeroshot.waffleclip_alphabet(texts)))
    lines.append(f"WaffleCLIP {config.waffle_kind} from {config.descriptions}: {shape}, {len(seeds)} seeds, "
                 f"words from {config.waffle_words or 'ex2 shipped list (not WaffleCLIP word_list)'}")
    return sets, {"waffle": info, "descriptions": descriptions.provenance, "class_match": match_info,
                  "classes_without_descriptions": missing}, lines


def prepare_texts(config: ClassifyConfig, classnames: list[str]) -> tuple[list[list[list[str]]], dict, list[str]]:
    """The texts of every class, once per seed (waffle) or once; what they came from; log lines."""
    if config.method == "clip":
        from ex2.data import load_templates

        templates = load_templates(config.templates)
        return [zeroshot.template_texts(classnames, templates)], {"templates": config.templates}, []
    if config.method == "waffle":
        return _waffle_sets(config, classnames)
    texts, info, lines = _description_texts(config, classnames)
    return [texts], info, lines


def class_text_sets(config: ClassifyConfig, classnames: list[str]) -> tuple[list[list[list[str]]], dict]:
    """The texts of every class, once per seed (waffle) or once; and what they came from."""
    sets, info, _ = prepare_texts(config, classnames)
    return sets, info


# --- evaluation --------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """One scored classifier: logits of the embedded images and the metrics they give."""

    texts: list[list[str]]  # per class
    text_embeddings: torch.Tensor  # [N_texts, D], flattened in class order
    weights: torch.Tensor  # [D, C]
    logits: torch.Tensor  # [N_images, C]
    metrics: dict[str, float]
    labels: torch.Tensor | None = None  # [N_images], for the interval of a mean over seeds


def batched_encoder(vlm, progress: bool = True, cache: bool = True) -> zeroshot.Encode:
    """Texts -> embeddings with ``vlm``: from the disk cache where it holds them (unless ``cache``
    is off), else encoded in chunks under a progress bar (:func:`ex2.vlm.embed_texts`)."""
    from ex2.vlm import embed_texts

    def encode(texts: list[str]) -> torch.Tensor:
        return embed_texts(vlm, texts, cache=cache, progress=progress)

    return encode


def evaluate(
    encode: zeroshot.Encode, text_sets: list[list[list[str]]], images: torch.Tensor, labels: torch.Tensor,
    aggregate: str, logit_scale: float = 100.0, logit_bias: float = 0.0,
) -> list[Evaluation]:
    """Score ``images [N, D]`` against each class-text set (all texts encoded in one call)."""
    results = []
    for texts, embeddings in zip(text_sets, zeroshot.encode_text_sets(encode, text_sets), strict=True):
        weights = zeroshot.pool_classifier(embeddings, zeroshot.owners_of(texts), len(texts), aggregate)
        logits = zeroshot.score(images, weights, logit_scale, logit_bias)
        results.append(Evaluation(texts, embeddings, weights, logits, zeroshot.classification_metrics(logits, labels),
                                  labels))
    return results


def summarise(results: list[Evaluation]) -> dict:
    """Metrics of one evaluation, or their mean over seeds with the spread (population standard
    deviation, numpy's default ddof 0, as WaffleCLIP reports it), the mean's 95 % intervals (images
    resampled, :func:`ex2.core.intervals.classification_intervals`) and per-seed values."""
    keys = ("acc1", "acc5", "mean_per_class_recall")
    if len(results) == 1:
        return dict(results[0].metrics)
    out = {}
    for key in keys:
        out[key], out[f"{key}_std"] = mean_std([r.metrics[key] for r in results])
    labels = results[0].labels
    if labels is not None:
        hits = [[zeroshot.topk_hits(r.logits, labels, k).numpy() for r in results] for k in (1, 5)]
        out.update(classification_intervals(hits[0], labels.numpy(), hits[1]))
    out["per_seed"] = [r.metrics for r in results]
    return out


def embed_dataset(vlm, dataset, config: ClassifyConfig):
    """Embeddings of the dataset's readable images and their labels."""
    from ex2.vlm import embed_images

    label_of = {path: label for path, label in dataset.items}
    images = embed_images(vlm, [p for p, _ in dataset.items], cache=config.cache, batch_size=config.batch_size,
                          strict=config.strict, progress=config.progress)
    if not images.paths:
        raise ValueError(f"{dataset.name} ({dataset.split}, {dataset.root}): no readable images "
                         f"({len(images.skipped)} skipped)")
    labels = torch.tensor([label_of[p] for p in images.paths], dtype=torch.long)
    return images, labels


def unreadable_classes(dataset, labels: torch.Tensor, drop: bool) -> list[int]:
    """Ids of the classes none of whose images could be read; an error naming them unless ``drop``
    (their recall would be missing from mean_per_class_recall without a word)."""
    seen = set(labels.tolist())
    lost = [i for i in range(len(dataset.classnames)) if i not in seen]
    if lost and not drop:
        names = _listed([dataset.classnames[i] for i in lost])
        raise ValueError(f"{dataset.name} ({dataset.split}, {dataset.root}): no readable image in "
                         f"{len(lost)} class(es): {names}; fix or remove those images, or pass "
                         "--drop-unreadable-classes to score the other classes only")
    return lost


def drop_classes(dataset, text_sets: list, labels: torch.Tensor, lost: list[int]):
    """The dataset, text sets and labels without the classes in ``lost`` (labels renumbered)."""
    if not lost:
        return dataset, text_sets, labels
    kept = [i for i in range(len(dataset.classnames)) if i not in set(lost)]
    new_id = {old: new for new, old in enumerate(kept)}
    smaller = replace(dataset, classnames=[dataset.classnames[i] for i in kept],
                                  items=[(p, new_id[y]) for p, y in dataset.items if y in new_id])
    texts = [[per_class[i] for i in kept] for per_class in text_sets]
    return smaller, texts, torch.tensor([new_id[y] for y in labels.tolist()], dtype=torch.long)


# --- outputs -----------------------------------------------------------------------------------


def _write_csv(path: Path, header: list, rows: list[list]) -> None:
    with atomic_open(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_tables(out: Path, classnames: list[str], result: Evaluation, labels: torch.Tensor, paths: list[Path]) -> None:
    """per_class.csv, confusion.csv, predictions.csv and their figures."""
    from ex2.classify.explain import plot_confusion, plot_per_class

    n = len(classnames)
    predictions = result.logits.argmax(1)
    confusion = zeroshot.confusion_matrix(predictions, labels, n)
    recall = zeroshot.per_class_recall(confusion)
    counts = [len(t) for t in result.texts]
    _write_csv(out / "per_class.csv", ["class_id", "class", "n_images", "accuracy", "n_texts"],
               [[i, classnames[i], int(confusion[i].sum()), f"{recall[i].item():.6f}", counts[i]] for i in range(n)])
    _write_csv(out / "confusion.csv", ["true \\ predicted", *classnames],
               [[classnames[i], *confusion[i].tolist()] for i in range(n)])
    top = result.logits.topk(min(5, n), dim=1).indices
    _write_csv(out / "predictions.csv", ["path", "label", "prediction", "correct", "top5"],
               [[str(p), classnames[y], classnames[k], int(y == k), "|".join(classnames[j] for j in t)]
                for p, y, k, t in zip(paths, labels.tolist(), predictions.tolist(), top.tolist(), strict=True)])
    plot_confusion(confusion, classnames, out / "confusion.png")
    plot_per_class(recall, classnames, out / "per_class.png")


def class_text_table(classnames: list[str], texts: list[list[str]]) -> dict[str, list[str]]:
    """class_texts.json: texts by class name; a name several classes share (ImageNet's two
    "missile" classes) gets its class id, "missile #657", so no class is lost."""
    shared = {n for n, count in Counter(classnames).items() if count > 1}
    return {(f"{n} #{i}" if n in shared else n): t for i, (n, t) in enumerate(zip(classnames, texts, strict=True))}


def build_metrics(config: ClassifyConfig, dataset, vlm, results: list[Evaluation], info: dict, images) -> dict:
    """metrics.json: fixed keys first, then what this method adds."""
    metrics = {
        "dataset": config.dataset, "split": dataset.split, "vlm": config.vlm, "vlm_identity": vlm.identity,
        "method": config.method, "descriptions": info.get("descriptions"),
        "categories": config.categories or None, **summarise(results),
        "n_images": len(images.paths), "n_classes": len(dataset.classnames),
        "n_skipped_images": len(images.skipped),
    }
    aligned = (info.get("descriptions") or {}).get("aligned_vlm")
    if isinstance(aligned, str):
        metrics["cross_vlm"] = aligned != config.vlm  # descriptions aligned against another VLM
    if info.get("classes_without_descriptions"):
        metrics["classes_without_descriptions"] = info["classes_without_descriptions"]
    texts = [len(t) for t in results[0].texts]
    metrics.update(aggregate=config.aggregate, texts_per_class=sum(texts) / len(texts),
                   logit_scale=vlm.logit_scale)
    metrics.update({k: v for k, v in info.items() if k not in ("descriptions", "classes_without_descriptions")})
    if len(results) > 1:
        metrics["tables_from_seed"] = config.seed
    return metrics


def run(config: ClassifyConfig, vlm=None, dataset=None) -> Path:
    """Classify the dataset's images; write the run folder and return it.

    ``vlm`` and ``dataset`` (already loaded) let one script evaluate many description files
    without loading the model again; by default both are loaded from the config.
    """
    from ex2.data import load_dataset
    from ex2.vlm import load_vlm

    if config.method in GVLM_METHODS:
        from ex2.classify import generative

        return generative.run(config, vlm, dataset)
    out = check_output_path(config.output, "folder")
    dataset = dataset or load_dataset(config.dataset, config.data_root, config.split, config.classnames)
    if config.method == "coder":
        from ex2.classify.coder import coder_inputs, run_classify

        inputs = coder_inputs(config, dataset.classnames)  # bad inputs fail before any model loads
        return run_classify(config, out, dataset, vlm or load_vlm(config.vlm, config.device, config.precision), inputs)
    text_sets, info, lines = prepare_texts(config, dataset.classnames)  # bad inputs fail before any model loads
    for line in lines:
        print(line, flush=True)
    vlm = vlm or load_vlm(config.vlm, config.device, config.precision)
    images, labels = embed_dataset(vlm, dataset, config)
    lost = unreadable_classes(dataset, labels, config.drop_unreadable_classes)
    if lost:
        info["dropped_classes"] = [dataset.classnames[i] for i in lost]
        print(f"dropped {len(lost)} class(es) without a readable image: {_listed(info['dropped_classes'])}")
    dataset, text_sets, labels = drop_classes(dataset, text_sets, labels, lost)
    results = evaluate(batched_encoder(vlm, config.progress, config.cache), text_sets, images.embeddings, labels,
                       config.aggregate, vlm.logit_scale, vlm.logit_bias)
    out.mkdir(parents=True, exist_ok=True)  # nothing is written before the run has its results
    save_config(config, out)
    write_json(out / "class_texts.json", class_text_table(dataset.classnames, results[0].texts))
    write_tables(out, dataset.classnames, results[0], labels, images.paths)
    if images.skipped:
        _write_csv(out / "skipped_images.csv", ["path", "reason"], [[str(p), r] for p, r in images.skipped])
        print(f"{len(images.skipped)} image(s) skipped as unreadable (see {out / 'skipped_images.csv'})")
    if config.explain or config.explain_misclassified:
        from ex2.classify.explain import explain_run

        explain_run(out / "explanations", dataset.classnames, results[0], images, labels,
                    config.explain, config.explain_misclassified, config.explain_top, config.progress)
    metrics = build_metrics(config, dataset, vlm, results, info, images)
    write_json(out / "metrics.json", metrics)
    print(f"{config.method} on {config.dataset} with {config.vlm}: top-1 {metrics['acc1']:.1%}, "
          f"top-5 {metrics['acc5']:.1%} ({metrics['n_images']} images) -> {out / 'metrics.json'}")
    return out
