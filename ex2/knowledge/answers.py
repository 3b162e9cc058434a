"""Single items from an LLM's answer, by one rule (:func:`parse_items`).

One item per line or list entry (``-``, ``*``, ``•``, ``_``, ``1.``, ``1)``), a lone line split at
commas or semicolons; headers ending in ":" dropped; markup, list markers and trailing full stops
removed; an analogue keeps the name before any ":", " - " or "(" and at most 6 words (other items 20).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ex2.core.text import SPECIAL_TOKEN, normalise_name

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
