"""Shared text helpers: the description in a completion, class names, masking a concept's name."""

from __future__ import annotations

import pytest

from ex2.text import clean_description, clean_name, mask_concept, normalise_name

# --- descriptions -------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "prompt", "expected"), [
    ("A cat has whiskers.<|im_end|>", None, "A cat has whiskers."),
    ("  A cat has\nwhiskers.\n\nSecond paragraph.", None, "A cat has whiskers."),
    ("Describe a cat.\n\nA small feline.</s>", "Describe a cat.\n\n", "A small feline."),
    ("<s> A small feline.</s><s>junk", None, "A small feline."),
    ("<|im_start|>user\nDescribe a cat.<|im_end|>\n<|im_start|>assistant\nFurry.<|im_end|>",
     "<|im_start|>user\nDescribe a cat.<|im_end|>\n<|im_start|>assistant\n", "Furry."),
    ("\n\n  Striped fur  \n \n more", None, "Striped fur"),
    ("Wings.[EOT] more", None, "Wings.[EOT] more"),
    ("<|eot_id|>", None, ""),
])
def test_clean_description(raw, prompt, expected):
    assert clean_description(raw, prompt=prompt) == expected


def test_clean_description_takes_the_tokenizers_special_tokens():
    assert clean_description("Wings.[EOT] more", special_tokens=["[EOT]"]) == "Wings."


# --- class names ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "clean"), [
    ("Black_footed_Albatross", "Black footed Albatross"),
    ("  american  bulldog\n", "american bulldog"),
    ("hard-leaved pocket orchid", "hard-leaved pocket orchid"),
    ("a__b", "a b"),
])
def test_clean_name_keeps_case_and_punctuation(raw, clean):
    assert clean_name(raw) == clean


def test_normalise_name_ignores_case_spaces_hyphens_and_underscores():
    assert normalise_name("Black_footed  ALBATROSS ") == "black footed albatross"
    assert normalise_name("Straße") == normalise_name("STRASSE")  # casefold, not lower
    assert normalise_name("Black-footed Albatross") == normalise_name("black_footed  albatross")
    assert normalise_name("pug") != normalise_name("pugs")


# --- masking a concept's name ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "concept", "masked"), [
    ("Two Golden Retrievers play.", "golden retriever", "Two X play."),
    ("A golden-retriever and a golden_retriever.", "Golden Retriever", "A X and a X."),
    ("Foxes and a fox.", "fox", "X and a X."),
    ("A foxglove grows.", "fox", "A foxglove grows."),  # whole words only
    ("A St. Bernard, not a Stx Bernard.", "st. bernard", "A X, not a Stx Bernard."),  # names are not patterns
    ("Nothing to hide.", "  ", "Nothing to hide."),
])
def test_mask_concept(text, concept, masked):
    assert mask_concept(text, concept) == masked


def test_mask_concept_takes_any_mask_literally():
    assert mask_concept("a pug photo", "pug", "{concept}") == "a {concept} photo"
    assert mask_concept("a pug photo", "pug", r"\1") == r"a \1 photo"
