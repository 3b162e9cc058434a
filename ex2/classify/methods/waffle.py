"""``waffle``: random words and characters after the class name, one random set shared by all classes,
accuracy averaged over seeds. With a descriptor file it is Roth et al.'s WaffleCLIP (ICCV 2023): their
seeded random words and characters drawn from the file, 7 seeds; without one, ex2's own random texts.

    ex2 classify --method waffle --descriptions descriptors_cars.json --waffle-words word_list.txt ...
    ex2 classify --method waffle --waffle-kind words --output runs/waffle     (ex2's own random texts)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from ex2.classify import zeroshot
from ex2.classify.common import text_classifier
from ex2.classify.descriptions import align, check_coverage, describe_alignment, load_descriptions
from ex2.classify.methods.base import Method
from ex2.classify.options import (
    DescriptionOptions,
    EncoderOptions,
    OptionGroup,
    TextClassifierOptions,
    at_least,
)
from ex2.core.config import option

WAFFLECLIP_PREFIX = "A photo of a "  # WaffleCLIP's label_before_text


@dataclass
class WaffleOptions(OptionGroup):
    """WaffleCLIP options (waffle)"""

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
    seeds: int | None = option(
        None, "waffle: draw its random texts N times from --seed on and report mean ± std with the mean's interval "
        "(the same as --waffle-seeds)"
    )

    def check(self) -> None:
        if self.waffle_concept is not None:
            if self.waffle_prefix != WAFFLECLIP_PREFIX:
                raise ValueError("give --waffle-concept or --waffle-prefix, not both (the concept sets the prefix)")
            self.waffle_prefix = f"A photo of a {self.waffle_concept}: a "
        if self.seeds is not None:
            at_least(self, ("seeds",), 1)
            self.waffle_seeds = self.seeds
        at_least(self, ("waffle_count", "waffle_seeds"), 1)


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


def class_texts(config, classnames: list[str]) -> tuple[list[list[list[str]]], dict, list[str]]:
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


def _waffleclip_sets(config, classnames: list[str], seeds: list[int], info: dict):
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


METHOD = Method(
    name="waffle",
    summary="WaffleCLIP: random words and characters after the class name, averaged over seeds",
    options=(DescriptionOptions, WaffleOptions, TextClassifierOptions, EncoderOptions),
    run=text_classifier(class_texts),
)
