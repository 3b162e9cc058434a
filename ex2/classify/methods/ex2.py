"""``ex2``: the descriptions an LLM wrote (``ex2 generate``), optionally only those of some inspection
categories (``ex2 inspect``), each text shaped by ``--description-format``; EX2's ablation of which
kind of text the VLM uses.

    ex2 classify --method ex2 --descriptions runs/gen/descriptions.jsonl --output runs/ex2
    ex2 classify --method ex2 --descriptions runs/inspect/categories.jsonl --categories visual ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ex2.classify.common import text_classifier
from ex2.classify.descriptions import Alignment, check_coverage, description_texts, needs_descriptions
from ex2.classify.methods.base import Method
from ex2.classify.options import DescriptionOptions, EncoderOptions, OptionGroup, TextClassifierOptions
from ex2.core.config import TEXT_FIELDS, option, text_field_option
from ex2.core.taxonomy import FILTER_CATEGORIES


@dataclass
class Ex2Options(OptionGroup):
    """EX2 description options (ex2)"""

    text_field: Literal[TEXT_FIELDS] = text_field_option()
    categories: list[str] = option(
        [], "ex2: keep only descriptions of these inspection categories (spurious, visual, non_visual, "
        "informative; several allowed, comma-separated too); read from categories.jsonl"
    )
    description_format: str | None = option(
        None, "ex2 only: text made of each description ({description} and {class} are filled in; default "
        "{description}); dclip, cupl and waffle write their authors' texts and refuse it"
    )

    def check(self) -> None:
        self.categories = [c.strip() for item in self.categories for c in item.split(",") if c.strip()]
        unknown = sorted(set(self.categories) - set(FILTER_CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categories {', '.join(unknown)}; choose from {', '.join(FILTER_CATEGORIES)}")
        if self.categories and self.method != "ex2":
            raise ValueError("--categories filters generated descriptions; use it with --method ex2")
        if self.description_format is not None and self.method != "ex2":
            raise ValueError(
                f"--description-format shapes --method ex2's texts; --method {self.method} writes its authors' "
                "own texts and would ignore it (use --method ex2 for texts of your own shape)"
            )
        self._check_text_field()
        if self.method == "ex2" and self.description_format is None:
            self.description_format = "{description}"
        if self.description_format is not None:
            check_description_format(self.description_format)

    def _check_text_field(self) -> None:
        if self.text_field not in TEXT_FIELDS:
            raise ValueError(f"--text-field must be one of {', '.join(TEXT_FIELDS)}, got {self.text_field!r}")
        if self.method != "ex2":
            if self.text_field == "raw":
                raise ValueError("--text-field raw picks the text of generated records; use it with --method ex2")
            self.text_field = "description"  # the other methods read descriptor texts as their authors wrote them


def check_description_format(description_format: str) -> None:
    """An error unless the format fills in with ``{description}`` and ``{class}`` alone."""
    try:
        description_format.format(**{"description": "", "class": ""})
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"--description-format {description_format!r}: only {{description}} and {{class}} are "
            f"filled in ({err!r}); write literal braces as {{{{ and }}}}") from err


def format_texts(config, classnames: list[str], alignment: Alignment, info: dict, lines: list[str]):
    """Each class's distinct descriptions in ``--description-format``. Returns (texts, classes without any)."""
    per_class = [list(dict.fromkeys(t)) for t in alignment.texts]
    missing = check_coverage(alignment, classnames, [i for i, t in enumerate(per_class) if not t],
                             config.allow_missing)
    texts = [[config.description_format.format(**{"description": d, "class": name}) for d in texts]
             for name, texts in zip(classnames, per_class, strict=True)]
    return texts, missing


def class_texts(config, classnames: list[str]) -> tuple[list[list[list[str]]], dict, list[str]]:
    texts, info, lines = description_texts(config, classnames, format_texts)
    return [texts], info, lines


METHOD = Method(
    name="ex2",
    summary="EX2: generated descriptions (optionally of some inspection categories), mean score per class",
    options=(DescriptionOptions, Ex2Options, TextClassifierOptions, EncoderOptions),
    run=text_classifier(class_texts),
    check=needs_descriptions,
)
