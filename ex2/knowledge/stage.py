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

Answers are split into items by one rule (:func:`parse_items`): one item per line or list entry
(``-``, ``*``, ``•``, ``_``, ``1.``, ``1)``), a lone line split at commas or semicolons; headers
ending in ":" dropped; markup, list markers and trailing full stops removed; an analogue keeps the
name before any ":", " - " or "(" and at most 6 words (other items 20). Output: one JSON record per item, ``{concept, class_id, kind,
text, other_concept, model, adapter, source}``. Each answered question is appended to
``OUTPUT.partial`` as it finishes; a rerun with the same settings asks only what is missing. The
answers are kept as ``OUTPUT.answers.jsonl`` (question, raw completion, answer).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from ex2.core.config import ConfigError, option, save_config
from ex2.core.io import append_jsonl, read_jsonl, write_jsonl
from ex2.core.names import LLM_FORMS
from ex2.core.text import SPECIAL_TOKEN, normalise_name

KINDS = ("attributes", "analogous", "synonyms", "ovo")
LLM_KINDS = ("attributes", "analogous", "ovo")
QUESTIONS = {
    "attributes": "Which visual features would let someone recognise a {c} in a photo? "
                  "Answer with a short list, one feature per line.",
    "analogous": "Name other kinds of objects or animals that look a lot like a {c} in a photo. "
                 "Answer with a short list of names, one per line.",
    "ovo": "In a photo, what makes a {c} look different from a {b}? Answer with a short list of "
           "features of the {c}, one per line.",
}
RETRY_QUESTION = ("Name other kinds of objects or animals that look a lot like a {c} in a photo, "
                  "but not {avoid}. Answer with a short list of names, one per line.")
RECORD_FIELDS = ("concept", "class_id", "kind", "text", "other_concept", "model", "adapter", "source")
RUN_SETTINGS = ("llm", "adapter", "sampler", "seed", "prompt_format", "max_new_tokens", "temperature",
                "top_p", "top_k", "vlm", "pairs", "analogous_max_similarity")
PARTIAL_HEADER = "ex2_knowledge_settings"


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
        if self.analogous_retries < 0 or self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError("--analogous-retries, --temperature and --top-k must be >= 0, --top-p in (0, 1]")
        if not -1 <= self.analogous_max_similarity <= 1:
            raise ConfigError(f"--analogous-max-similarity is a cosine in [-1, 1], not {self.analogous_max_similarity}")


def pair_count(pairs: str) -> int:
    """K of ``nearest:K``."""
    kind, _, k = pairs.partition(":")
    if kind != "nearest" or not k.isdigit() or int(k) < 1:
        raise ConfigError(f"--pairs {pairs!r}: expected nearest:K with K >= 1, e.g. nearest:3")
    return int(k)


# --- parsing answers ------------------------------------------------------------------------

_MARKER = re.compile(r"^\s*(?:[-*•_+]+|\(?\d{1,2}[.)]|\(?[a-z][.)](?=\s))\s*", re.IGNORECASE)
_MARKUP = re.compile(r"\*\*|__|`|#+\s")


def answer_text(raw: str, prompt: str | None = None, special_tokens: Iterable[str] = ()) -> str:
    """The answer inside a raw completion: an echoed prompt dropped, cut at the first special token
    (leading ones skipped)."""
    text = raw
    if prompt and text.startswith(prompt):
        text = text[len(prompt):]
    extra = sorted((t for t in special_tokens if t), key=len, reverse=True)
    pattern = re.compile("|".join([*map(re.escape, extra), SPECIAL_TOKEN.pattern]))
    while (match := pattern.match(text.lstrip())) is not None:
        text = text.lstrip()[match.end():]
    return pattern.split(text, maxsplit=1)[0]


MAX_WORDS = {"analogous": 6}  # an analogue is a name; a longer item is a sentence about something else
DEFAULT_MAX_WORDS = 20


def parse_items(answer: str, kind: str, concept: str = "", max_items: int = 10, max_words: int | None = None,
                complete: bool = True) -> list[str]:
    """Single items from one answer, by the rule in this module's docstring. An answer cut off by
    the token limit (``complete`` False) loses its last line, which may stop mid-item. Items longer
    than ``max_words`` (default 6 words for analogues, 20 for the others) are dropped."""
    max_words = max_words or MAX_WORDS.get(kind, DEFAULT_MAX_WORDS)
    lines = [line for line in answer.splitlines() if line.strip()]
    marked = [line for line in lines if _MARKER.match(line)]
    if len(lines) == 1 and not marked:
        lines = _split_lone_line(lines[0], kind)
    if not complete and len(lines) > 1:
        lines = lines[:-1]
    marked = [line for line in lines if _MARKER.match(line)]
    if marked:
        lines = marked  # a lead-in sentence or closing remark around a list is not an item
    items: list[str] = []
    seen = {_key(concept)} if concept else set()
    for line in lines:
        item = _clean_item(line, kind)
        key = _key(item)
        if item and key not in seen and len(item.split()) <= max_words:
            seen.add(key)
            items.append(item)
    return items[:max_items]


def _key(item: str) -> str:
    """Matching key of an item: case, spacing and a leading article ignored."""
    return re.sub(r"^(?:a|an|the)\s+", "", normalise_name(item))


def _split_lone_line(line: str, kind: str, list_words: int = 6) -> list[str]:
    """A lone line is a list when every comma/semicolon piece is short ("tiger, lion and
    leopard"); else it is prose, kept sentence by sentence."""
    pieces = re.split(r"[;,]\s*|\s+and\s+" if kind == "analogous" else r"[;,]\s*", line)
    if all(len(p.split()) <= list_words for p in pieces):
        return pieces
    return re.split(r"(?<=[.!?])\s+", line)


def _clean_item(line: str, kind: str) -> str:
    text = _MARKUP.sub("", _MARKER.sub("", line, count=1)).strip()
    if text.endswith(":"):
        return ""  # a header
    if kind == "analogous":
        text = re.split(r":|\s[-–—]\s|\(", text, maxsplit=1)[0]
    text = " ".join(text.split()).strip(" \"'").rstrip(".;,!")
    if text and not text[1:2].isupper():
        text = text[0].lower() + text[1:]  # "Tiger" -> "tiger"; "LED lights" stays
    return text


# --- existing knowledge in ------------------------------------------------------------------


def from_json(path: str | Path, kind: str, concepts: list[str]) -> list[dict]:
    """Records from a user's JSON: {class: [items]} (ovo: {class: {other class: [items]}})."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected JSON knowledge for --from-json {kind}=FILE)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    shape = "{class: {other class: [strings]}}" if kind == "ovo" else "{class: [strings]}"
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {shape}")
    index = {normalise_name(c): i for i, c in enumerate(concepts)}
    records = []
    for concept, value in data.items():
        if normalise_name(concept) not in index:
            raise ValueError(f"{path}: {concept!r} is no concept of the dataset ({', '.join(concepts[:10])} …)")
        entries = value.items() if kind == "ovo" and isinstance(value, dict) else [(None, value)]
        if kind == "ovo" and not isinstance(value, dict):
            raise ValueError(f"{path}: {concept!r} must map to {{other class: [strings]}}; expected {shape}")
        for other, items in entries:
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError(f"{path}: items of {concept!r} must be a list of strings; expected {shape}")
            for item in dict.fromkeys(i.strip() for i in items if i.strip()):
                records.append(_record(concepts[index[normalise_name(concept)]], index[normalise_name(concept)],
                                       kind, item, other, None, None, f"json:{path}"))
    return records


def _record(concept, class_id, kind, text, other, model, adapter, source) -> dict:
    return {"concept": concept, "class_id": class_id, "kind": kind, "text": text, "other_concept": other,
            "model": model, "adapter": adapter, "source": source}


def load_knowledge(path: str | Path) -> tuple[dict[str, dict], dict]:
    """Knowledge from our JSONL: ``{kind: {concept: [items]}}``, ovo as ``{(concept, other): [items]}``;
    and its provenance."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"knowledge file {path} does not exist (expected the JSONL of `ex2 knowledge`)")
    records = read_jsonl(path, required=("concept", "kind", "text"))
    out: dict[str, dict] = {kind: {} for kind in KINDS}
    for number, record in enumerate(records, start=1):
        kind = record["kind"]
        if kind not in KINDS:
            raise ValueError(f"{path}: record {number} has kind {kind!r}; expected one of {', '.join(KINDS)}")
        key = (record["concept"], record.get("other_concept")) if kind == "ovo" else record["concept"]
        if kind == "ovo" and not record.get("other_concept"):
            raise ValueError(f"{path}: ovo record {number} lacks other_concept")
        out[kind].setdefault(key, []).append(str(record["text"]))
    provenance = {"path": str(path.resolve()), "n_records": len(records),
                  "model": sorted({str(r.get("model")) for r in records if r.get("model")}) or None,
                  "adapter": sorted({str(r.get("adapter")) for r in records if r.get("adapter")}) or None}
    return out, provenance


# --- the VLM's text space -------------------------------------------------------------------


def name_embeddings(vlm, names: list[str]) -> torch.Tensor:
    """Unit VLM embeddings of "a photo of a {name}." (CoDer's class-name text)."""
    return vlm.encode_texts([f"a photo of a {n}." for n in names])


def nearest_pairs(embeddings: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """Ordered pairs (a, b) for b among a's ``k`` nearest other classes, both orders, sorted."""
    sims = embeddings @ embeddings.T
    sims.fill_diagonal_(-float("inf"))
    near = sims.topk(min(k, len(embeddings) - 1), dim=1).indices.tolist()
    return sorted({p for a, bs in enumerate(near) for b in bs for p in ((a, b), (b, a))})


def too_similar(vlm, items: list[str], class_embeddings: torch.Tensor, own: int, threshold: float) -> list[bool]:
    """Whether each analogue's text is more similar than ``threshold`` to a class other than ``own``."""
    if not items:
        return []
    others = torch.cat([class_embeddings[:own], class_embeddings[own + 1:]])
    if len(others) == 0:
        return [False] * len(items)
    return ((name_embeddings(vlm, items) @ others.T).max(1).values > threshold).tolist()


# --- WordNet --------------------------------------------------------------------------------

WORDNET_DIRS = (Path("/usr/share/wordnet"),)  # Debian's wordnet-base
# WordNet 3.0's lexicographer files in order (lexnames(5WN)); Debian's package omits the list nltk reads
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS_NUMBER = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def wordnet():
    """An nltk WordNet reader over nltk's own data if installed, else over Debian's ``wordnet-base``
    (``/usr/share/wordnet``, copied once into the ex2 cache beside the lexnames list nltk reads);
    nothing is downloaded."""
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as err:
        raise ValueError("synonyms need nltk: pip install 'nltk>=3.8' (listed in ex2's requirements)") from err
    try:  # nltk's own corpus; ex2's copy of Debian's (found once on nltk's path) lacks index.sense
        return WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)
    except (LookupError, OSError):
        pass
    for folder in WORDNET_DIRS:
        if (folder / "data.noun").is_file():
            root = _nltk_copy(folder)
            if str(root.parents[1]) not in nltk.data.path:
                nltk.data.path.append(str(root.parents[1]))  # nltk reads only below its data paths
            return _wordnet_30_reader()(str(root), None)
    raise ValueError("synonyms need WordNet data: install Debian's wordnet-base (apt-get install wordnet-base, "
                     "as `make system-deps` does) or nltk's wordnet corpus; or leave synonyms out of --kinds")


def _wordnet_30_reader():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class WordNet30(WordNetCorpusReader):
        """Debian ships WordNet 3.0, the version nltk maps other wordnets to: no mapping to build
        (which would read the optional index.sense twice)."""

        def map_wn(self, version="wordnet"):
            return None

    return WordNet30


def _nltk_copy(folder: Path) -> Path:
    """``cache_dir()/nltk_data/corpora/wordnet``: ``folder``'s WordNet files and the lexnames list."""
    import shutil

    from ex2.core.io import atomic_write_text, cache_dir, temp_folder_beside

    target = cache_dir() / "nltk_data" / "corpora" / "wordnet"
    if (target / "lexnames").is_file():
        return target
    tmp = temp_folder_beside(target)
    try:
        for source in folder.iterdir():
            if source.is_file():
                shutil.copyfile(source, tmp / source.name)
        lines = [f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}" for i, name in enumerate(LEXNAMES)]
        atomic_write_text(tmp / "lexnames", "\n".join(lines) + "\n")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "lexnames").is_file():  # else another process finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def wordnet_synonyms(reader, concept: str, encode) -> list[str]:
    """CoDer's rule: among the noun synsets of ``concept`` (most frequent first), the one whose
    gloss is nearest "a photo of a {concept}." in ``encode``'s space; its lemmas but the concept."""
    synsets = reader.synsets(concept.strip().replace(" ", "_"), pos="n")
    if not synsets:
        return []
    synsets = sorted(synsets, key=lambda s: -sum(_count(lemma) for lemma in s.lemmas()))
    name = encode([f"a photo of a {concept}."])
    glosses = encode([s.definition() for s in synsets])
    chosen = synsets[int((glosses @ name.T).flatten().argmax())]
    own = normalise_name(concept)
    lemmas = [lemma.name().replace("_", " ") for lemma in chosen.lemmas()]
    return [w for w in dict.fromkeys(lemmas) if normalise_name(w) != own]


def _count(lemma) -> int:
    try:
        return lemma.count()
    except (OSError, LookupError):
        return 0


# --- asking the LLM -------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    kind: str
    class_id: int
    concept: str
    other: str | None = None
    attempt: int = 0
    avoid: tuple[str, ...] = ()

    @property
    def key(self) -> list:
        return [self.kind, self.concept, self.other, self.attempt]

    @property
    def text(self) -> str:
        if self.kind == "analogous" and self.attempt:
            return RETRY_QUESTION.format(c=self.concept, avoid=", ".join(self.avoid))
        return QUESTIONS[self.kind].format(c=self.concept, b=self.other)


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def answers_path(output: Path) -> Path:
    return output.with_name(output.name + ".answers.jsonl")


def _settings(config: KnowledgeConfig, adapter: Path | None, prompt_format: str) -> dict[str, Any]:
    values = dataclasses.asdict(config) | {"adapter": str(adapter) if adapter else None,
                                           "prompt_format": prompt_format}
    return {name: values[name] for name in RUN_SETTINGS}


def _load_partial(path: Path, settings: dict) -> dict[str, dict]:
    """Answers of an interrupted run with the same settings, by question key; the file is rewritten
    (settings first, no torn line) so that appending goes on after it."""
    rows: list[dict] = []
    if path.is_file():
        rows = read_jsonl(path, tolerate_torn_tail=True)
        if not rows or PARTIAL_HEADER not in rows[0]:
            raise ValueError(f"{path}: expected a partial knowledge file starting with its settings; delete it")
        changed = [f"{k}: {rows[0][PARTIAL_HEADER].get(k)!r} -> {v!r}" for k, v in settings.items()
                   if rows[0][PARTIAL_HEADER].get(k) != v]
        if changed and len(rows) > 1:
            raise ValueError(f"{path}: left by an interrupted run with other settings ({'; '.join(changed)}); "
                             "rerun with those settings to resume, or delete the file to start over")
        rows = rows[1:]
    write_jsonl(path, [{PARTIAL_HEADER: settings}, *rows])
    return {json.dumps(r["key"]): r for r in rows}


class Asker:
    """Asks questions through a sampler, appending each answer to the partial file."""

    def __init__(self, config: KnowledgeConfig, partial: Path, settings: dict, done: dict[str, dict]):
        self.config, self.partial, self.settings, self.done = config, partial, settings, done
        self.sampler = None

    def ask(self, questions: list[Question]) -> dict[str, dict]:
        from ex2.generate.stage import record_seed
        from ex2.llm.models import format_prompt
        from ex2.llm.samplers import encode_prompts

        todo = [q for q in questions if json.dumps(q.key) not in self.done]
        if todo and self.sampler is None:
            self.sampler = self._load()
        bar = tqdm(total=len(questions), initial=len(questions) - len(todo), unit="question", desc="knowledge")
        for start in range(0, len(todo), self.config.batch_size):
            batch = todo[start:start + self.config.batch_size]
            tokenizer, fmt = self.sampler.tokenizer, self.settings["prompt_format"]
            prompts = [format_prompt(tokenizer, q.text, fmt) for q in batch]
            seeds = [record_seed(self.config.seed, q.concept, q.text, q.attempt) for q in batch]
            raws = self.sampler.generate(encode_prompts(tokenizer, prompts, fmt), seeds)
            special = list(getattr(tokenizer, "all_special_tokens", []))
            for q, prompt, raw in zip(batch, prompts, raws, strict=True):
                row = {"key": q.key, "question": q.text, "raw": raw, "answer": answer_text(raw, prompt, special),
                       "complete": any(t in raw for t in self._eos_texts())}
                append_jsonl(self.partial, row)
                self.done[json.dumps(q.key)] = row
            bar.update(len(batch))
        bar.close()
        return {json.dumps(q.key): self.done[json.dumps(q.key)] for q in questions}

    def _eos_texts(self) -> list[str]:
        """How the end-of-sequence tokens read in a completion (an answer without one was cut off)."""
        tokenizer = self.sampler.tokenizer
        ids = getattr(self.sampler, "eos_ids", None) or [tokenizer.eos_token_id]
        return [t for t in (tokenizer.decode([i]) for i in ids if i is not None) if t]

    def _load(self):
        from ex2.llm.samplers import SamplingSettings, load_sampler

        c = self.config
        sampling = SamplingSettings(c.max_new_tokens, c.temperature, c.top_p, c.top_k)
        options = {"device": c.device, "dtype": c.dtype, "merge_adapter": c.merge_adapter, "batch_size": c.batch_size}
        if c.sampler == "vllm":
            options["seed"] = c.seed
        return load_sampler(c.sampler, c.llm, self.settings["adapter"], sampling, **options)


def _items(answer: dict, question: Question, config: KnowledgeConfig) -> list[str]:
    complete = answer.get("complete", SPECIAL_TOKEN.search(answer["raw"]) is not None)
    return parse_items(answer["answer"], question.kind, question.concept, config.max_items, complete=complete)


def ask_analogous(asker: Asker, vlm, concepts: list[str], class_embeddings: torch.Tensor,
                  config: KnowledgeConfig) -> dict[int, list[str]]:
    """Analogues per class: dropped when too similar to another class, asked again for those."""
    kept: dict[int, list[str]] = {c: [] for c in range(len(concepts))}
    avoid: dict[int, list[str]] = {c: [] for c in range(len(concepts))}
    round_ = [Question("analogous", c, name) for c, name in enumerate(concepts)]
    for attempt in range(config.analogous_retries + 1):
        answers = asker.ask(round_)
        again = []
        for q in round_:
            items = [i for i in _items(answers[json.dumps(q.key)], q, config) if i not in kept[q.class_id]]
            flags = too_similar(vlm, items, class_embeddings, q.class_id, config.analogous_max_similarity)
            kept[q.class_id] += [i for i, bad in zip(items, flags, strict=True) if not bad]
            dropped = [i for i, bad in zip(items, flags, strict=True) if bad]
            avoid[q.class_id] += dropped
            if dropped:
                again.append(Question("analogous", q.class_id, q.concept, attempt=attempt + 1,
                                      avoid=tuple(avoid[q.class_id])))
        round_ = again
        if not round_:
            break
    return kept


def gather(config: KnowledgeConfig, concepts: list[str], done: dict, partial: Path, settings: dict) -> list[dict]:
    """Every record of the kinds asked, in (kind, class, other class) order."""
    from ex2.vlm import load_vlm

    given = {item.partition("=")[0]: item.partition("=")[2] for item in config.from_json}
    records: list[dict] = []
    for kind, path in given.items():
        records += from_json(path, kind, concepts)
    wanted = [k for k in config.kinds if k not in given]
    if not wanted:
        return records
    vlm = load_vlm(config.vlm, config.device, config.precision)
    class_embeddings = name_embeddings(vlm, concepts)
    asker = Asker(config, partial, settings, done)
    model, adapter = settings["llm"], settings["adapter"]
    if "attributes" in wanted:
        questions = [Question("attributes", c, name) for c, name in enumerate(concepts)]
        answers = asker.ask(questions)
        for q in questions:
            records += [_record(q.concept, q.class_id, "attributes", t, None, model, adapter, "llm")
                        for t in _items(answers[json.dumps(q.key)], q, config)]
    if "analogous" in wanted:
        for c, items in ask_analogous(asker, vlm, concepts, class_embeddings, config).items():
            records += [_record(concepts[c], c, "analogous", t, None, model, adapter, "llm") for t in items]
    if "ovo" in wanted and len(concepts) > 1:
        pairs = nearest_pairs(class_embeddings, pair_count(config.pairs))
        questions = [Question("ovo", a, concepts[a], concepts[b]) for a, b in pairs]
        answers = asker.ask(questions)
        for q in questions:
            records += [_record(q.concept, q.class_id, "ovo", t, q.other, model, adapter, "llm")
                        for t in _items(answers[json.dumps(q.key)], q, config)]
    if "synonyms" in wanted:
        reader = wordnet()
        for c, name in enumerate(concepts):
            records += [_record(name, c, "synonyms", s, None, None, None, "wordnet")
                        for s in wordnet_synonyms(reader, name, vlm.encode_texts)]
    return records


def run(config: KnowledgeConfig) -> Path:
    """``ex2 knowledge``: the output JSONL file."""
    from ex2.data import concept_names
    from ex2.generate.stage import resolve_prompt_format
    from ex2.llm.models import load_tokenizer
    from ex2.llm.samplers import resolve_adapter

    output = Path(config.output)
    concepts = concept_names(config.concepts) if config.concepts else concept_names(config.dataset, config.data_root)
    concepts = concepts[: config.limit_concepts] if config.limit_concepts else concepts
    adapter = resolve_adapter(config.adapter) if config.adapter else None
    asks_llm = any(k in LLM_KINDS for k in config.kinds if not any(f.startswith(f"{k}=") for f in config.from_json))
    fmt = resolve_prompt_format(load_tokenizer(config.llm), config.prompt_format) if asks_llm else config.prompt_format
    settings = _settings(config, adapter, fmt)
    partial = partial_path(output)
    done = _load_partial(partial, settings)
    records = gather(config, concepts, done, partial, settings)
    write_jsonl(output, records)
    save_config(dataclasses.replace(config, prompt_format=fmt), output.parent, name=output.name + ".config.yaml")
    partial.replace(answers_path(output))  # the raw answers, kept; moved back to .partial it re-parses
    counts = {k: sum(r["kind"] == k for r in records) for k in KINDS}
    print(f"knowledge for {len(concepts)} concepts: {counts} -> {output}")
    return output
