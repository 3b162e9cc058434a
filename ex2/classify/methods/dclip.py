"""``dclip`` (Menon & Vondrick, ICLR 2023): "{class}, which (is/has) {descriptor}", with "." on
ImageNet, the class named as the file's key; a class's score is the mean over its texts.

    ex2 classify --method dclip --descriptions descriptors_cub.json --dataset cub --data-root DIR ...
"""

from __future__ import annotations

from ex2.classify import zeroshot
from ex2.classify.common import text_classifier
from ex2.classify.descriptions import Alignment, check_coverage, description_texts, needs_descriptions
from ex2.classify.methods.base import Method
from ex2.classify.options import DescriptionOptions, EncoderOptions, TextClassifierOptions

DCLIP_SUFFIX = {"imagenet": "."}  # DCLIP's after_text per dataset (its load.py); "" elsewhere


def dclip_texts(config, classnames: list[str], alignment: Alignment, info: dict, lines: list[str]):
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


def class_texts(config, classnames: list[str]) -> tuple[list[list[list[str]]], dict, list[str]]:
    texts, info, lines = description_texts(config, classnames, dclip_texts)
    return [texts], info, lines


METHOD = Method(
    name="dclip",
    summary="DCLIP: '{class}, which (is/has) {descriptor}' from a descriptor file, mean score per class",
    options=(DescriptionOptions, TextClassifierOptions, EncoderOptions),
    run=text_classifier(class_texts),
    check=needs_descriptions,
)
