"""Text helpers every stage shares: the description inside a raw completion, class-name clean-up
and matching, and masking a concept's name in a text.

    clean_description("<|im_start|> Red wings.\\n\\nMore.")   -> "Red wings."
    raw_text("\\nRed wings.\\n\\nMore.<|im_end|>")            -> "\\nRed wings.\\n\\nMore."
    scored_text("Red wings.\\n\\nMore.", "first-paragraph")   -> "Red wings."
    clean_name("Black_footed__Albatross ")                   -> "Black footed Albatross"
    normalise_name("Black-footed  albatross")                -> "black footed albatross"
    mask_concept("Two Golden Retrievers.", "golden retriever") -> "Two X."
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# special tokens of common chat/base vocabularies: <|im_end|>, <|eot_id|>, </s>, [INST], <end_of_turn>
SPECIAL_TOKEN = re.compile(
    r"<\|[^|<>\s]{1,40}\|>|</?s>|<pad>|<unk>|<eos>|<bos>|<(?:start|end)_of_turn>|\[/?INST\]"
)
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SPACES = re.compile(r"\s+")
_NAME_SEPARATORS = re.compile(r"[\s_\-]+")


# --- descriptions ----------------------------------------------------------------------------


def _special_pattern(special_tokens: Iterable[str]) -> re.Pattern:
    extra = sorted((t for t in special_tokens if t), key=len, reverse=True)
    if not extra:
        return SPECIAL_TOKEN
    return re.compile("|".join([*map(re.escape, extra), SPECIAL_TOKEN.pattern]))


def clean_description(raw: str, prompt: str | None = None, special_tokens: Iterable[str] = ()) -> str:
    """The description inside one raw completion.

    Drops an echoed ``prompt``, leading special tokens, everything from the first special token on
    (an end-of-turn token ends the answer), keeps the first paragraph and collapses whitespace.
    ``special_tokens`` adds a tokenizer's own (``tokenizer.all_special_tokens``) to the known ones.
    """
    text = raw
    if prompt:
        if text.startswith(prompt):
            text = text[len(prompt):]
        elif prompt.strip() and text.lstrip().startswith(prompt.strip()):
            text = text.lstrip()[len(prompt.strip()):]
    pattern = _special_pattern(special_tokens)
    while (match := pattern.match(text.lstrip())) is not None:  # leading specials
        text = text.lstrip()[match.end():]
    text = pattern.split(text, maxsplit=1)[0]
    text = PARAGRAPH_BREAK.split(text.strip(), maxsplit=1)[0]
    return " ".join(text.split())


def raw_text(raw: str, special_tokens: Iterable[str] = ()) -> str:
    """A completion as EX2 scored it: decoded with ``skip_special_tokens=True``, so special tokens
    (the known ones and ``special_tokens``) are dropped and everything else, whitespace and later
    paragraphs included, is kept as it is."""
    return _special_pattern(special_tokens).sub("", raw)


# what a reward, a classifier or an inspection reads of a completion: EX2's raw decoded text, or the
# first paragraph ``ex2 generate`` keeps as the description
SCORED_TEXTS = ("raw", "first-paragraph")


def scored_text(raw: str, mode: str = "raw", special_tokens: Iterable[str] = ()) -> str:
    """The text of a completion that is scored: ``raw`` (:func:`raw_text`, EX2's) or
    ``first-paragraph`` (:func:`clean_description`)."""
    if mode == "raw":
        return raw_text(raw, special_tokens)
    if mode == "first-paragraph":
        return clean_description(raw, special_tokens=special_tokens)
    raise ValueError(f"unknown scored text {mode!r}; choose one of {', '.join(SCORED_TEXTS)}")


def resolve_text_field(records: list[dict], text_field: str, source: object) -> str:
    """The record field a stage reads, ``raw`` or ``description``. ``auto`` follows the records: the
    text an inspection judged (its records say ``text_field``), else EX2's raw completion (what the
    default reward scores) where every record has one, else the description as written."""
    if text_field != "auto":
        return text_field
    judged = {record.get("text_field") for record in records} - {None}
    if len(judged) > 1:
        raise ValueError(f"{source}: records were judged on different texts ({', '.join(sorted(judged))}); "
                         "pass --text-field raw or description")
    if judged:
        return judged.pop()
    return "raw" if records and all(isinstance(r.get("raw"), str) for r in records) else "description"


def record_text(record: dict, text_field: str, source: object) -> str:
    """The text of a generated record (``source`` names its file in errors): its ``description``,
    or its ``raw`` completion as EX2 scored it (:func:`raw_text`; surrounding whitespace, which
    CLIP's tokenizers ignore, stripped)."""
    if text_field == "raw":
        if not isinstance(record.get("raw"), str):
            raise ValueError(f"{source}: a record of {record.get('concept')!r} has no 'raw' completion for "
                             "--text-field raw; use --text-field description")
        return raw_text(record["raw"]).strip()
    return str(record["description"]).strip()


# --- class names -----------------------------------------------------------------------------


def clean_name(raw: str) -> str:
    """EX2's class-name processing: underscores become spaces, runs of spaces one."""
    return _SPACES.sub(" ", raw.replace("_", " ")).strip()


def normalise_name(name: str) -> str:
    """Class-name key for matching: case, and runs of spaces, hyphens and underscores, ignored
    ("Black-footed Albatross" and "black_footed albatross" agree)."""
    return _NAME_SEPARATORS.sub(" ", name).strip().casefold()


def concept_pattern(concept: str) -> re.Pattern | None:
    """A case-insensitive pattern for ``concept``'s name as whole words, its words joined by spaces,
    hyphens or underscores, with an optional plural ``s``/``es``; None for an empty name.

    The name's edges are checked with look-arounds (no word character just outside), not ``\\b``:
    ``\\b`` after a closing ")" demands a word character next, so "kite (bird of prey)" could
    never match itself."""
    words = [re.escape(w) for w in concept.lower().split()]
    if not words:
        return None
    return re.compile(r"(?<!\w)" + r"[\s\-_]+".join(words) + r"(?:e?s)?(?!\w)", re.IGNORECASE)


def contains_name(text: str, name: str) -> bool:
    """VLMClassifier's answer rule (Zhang et al., ``main_results/eval.ipynb``): the class name occurs
    in the text as a substring, ignoring case ("cat" is found in "category")."""
    return bool(name) and name.lower() in text.lower()


def mask_concept(text: str, concept: str, mask: str = "X") -> str:
    """``text`` with the concept's name (and its plural) replaced by ``mask``."""
    pattern = concept_pattern(concept)
    return text if pattern is None else pattern.sub(lambda _: mask, text)
