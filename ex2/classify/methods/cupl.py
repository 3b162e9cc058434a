"""``cupl`` (Pratt et al., ICCV 2023): the normalised mean of all of a class's prompt embeddings,
repeats counted, optionally pooled with CLIP's 80 templates (CuPL's ``use_both``).

    ex2 classify --method cupl --cupl-mode both --descriptions flower_prompts_base.json --dataset flowers102 ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ex2.classify import zeroshot
from ex2.classify.common import text_classifier
from ex2.classify.descriptions import Alignment, check_coverage, description_texts, needs_descriptions
from ex2.classify.methods.base import Method
from ex2.classify.options import DescriptionOptions, EncoderOptions, OptionGroup, TextClassifierOptions
from ex2.core.config import option
from ex2.data import load_templates

CUPL_TEMPLATES = "clip_80"  # CLIP's 80 ImageNet templates, the ones CuPL pools with


@dataclass
class CuplOptions(OptionGroup):
    """CuPL options (cupl)"""

    cupl_mode: Literal["prompts", "both"] = option(
        "prompts", "cupl: the prompts alone, or both: pooled with class-name templates in one mean (CuPL's use_both)"
    )
    cupl_templates: str = option(
        CUPL_TEMPLATES, "cupl both: class-name templates (default clip_80, CLIP's 80, as CuPL), a set or a file"
    )


def cupl_texts(config, classnames: list[str], alignment: Alignment, info: dict, lines: list[str]):
    """CuPL's prompts, repeats kept; with ``--cupl-mode both`` after the templates filled with
    the file's key. Returns (texts, classes without prompts)."""
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


def class_texts(config, classnames: list[str]) -> tuple[list[list[list[str]]], dict, list[str]]:
    texts, info, lines = description_texts(config, classnames, cupl_texts)
    return [texts], info, lines


METHOD = Method(
    name="cupl",
    summary="CuPL: the mean embedding of an LLM's prompts per class, optionally with CLIP's templates",
    options=(DescriptionOptions, CuplOptions, TextClassifierOptions, EncoderOptions),
    run=text_classifier(class_texts),
    check=needs_descriptions,
    aggregate="mean_embedding",
)
