"""Shared text helpers: the description in a completion, class names, masking a concept's name."""

from __future__ import annotations

import json

import pytest

from ex2.core.text import clean_description, clean_name, mask_concept, normalise_name

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


# --- the scored text: EX2's raw completion or the first paragraph ------------------------------

RAW = "\nHere's a possible poem about a temple:\n\nStone steps, incense.<|im_end|>"


def test_raw_text_drops_special_tokens_only():
    from ex2.core.text import raw_text, scored_text

    assert raw_text(RAW) == "\nHere's a possible poem about a temple:\n\nStone steps, incense."
    assert raw_text("<s> a cat</s>", ["<extra>"]) == " a cat"
    assert scored_text(RAW, "first-paragraph") == "Here's a possible poem about a temple:"
    assert scored_text(RAW) == raw_text(RAW)
    with pytest.raises(ValueError, match="raw, first-paragraph"):
        scored_text(RAW, "paragraph")


def generated(tmp_path):
    path = tmp_path / "d.jsonl"
    records = [{"concept": "temple", "class_id": 0, "description": clean_description(RAW), "raw": RAW}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_classify_and_inspect_read_the_text_field_asked_for(tmp_path):
    from ex2.classify.descriptions import load_descriptions
    from ex2.classify.stage import ClassifyConfig
    from ex2.inspect.stage import InspectConfig, load_inputs

    path = generated(tmp_path)
    whole = "Here's a possible poem about a temple:\n\nStone steps, incense."
    header = "Here's a possible poem about a temple:"
    first = load_descriptions(path, text_field="description")
    assert first.by_concept == {"temple": [header]} and first.provenance["text_field"] == "description"
    raw = load_descriptions(path, text_field="raw")
    assert raw.by_concept == {"temple": [whole]} and raw.provenance["text_field"] == "raw"
    (record,) = load_inputs(InspectConfig(input=str(path), text_field="raw"))
    assert record["description"] == whole and record["text_field"] == "raw" and record["raw"] == RAW
    (record,) = load_inputs(InspectConfig(input=str(path), text_field="description"))
    assert record["description"] == header and record["text_field"] == "description"
    with pytest.raises(ValueError, match="use it with --method ex2"):
        ClassifyConfig(method="dclip", descriptions=str(path), text_field="raw")
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"concept": "temple", "description": "a roof"}\n')
    with pytest.raises(ValueError, match="has no 'raw' completion"):
        load_descriptions(bare, text_field="raw")


def test_by_default_stages_read_what_the_reward_scored_or_what_was_judged(tmp_path):
    from ex2.classify.descriptions import load_descriptions
    from ex2.classify.stage import ClassifyConfig
    from ex2.inspect.stage import InspectConfig, load_inputs

    path = generated(tmp_path)
    whole = "Here's a possible poem about a temple:\n\nStone steps, incense."
    assert ClassifyConfig(method="ex2", descriptions=str(path)).text_field == "auto"
    assert ClassifyConfig(method="dclip", descriptions=str(path)).text_field == "description"
    auto = load_descriptions(path)  # generated records: EX2's raw completion, as the default reward scores it
    assert auto.by_concept == {"temple": [whole]} and auto.provenance["text_field"] == "raw"
    assert load_inputs(InspectConfig(input=str(path)))[0]["text_field"] == "raw"
    bare = tmp_path / "bare.jsonl"  # descriptions written without a completion: read as written
    bare.write_text('{"concept": "temple", "description": "a roof"}\n')
    assert load_descriptions(bare).provenance["text_field"] == "description"
    judged = tmp_path / "categories.jsonl"  # an inspection's output: the text it judged
    judged.write_text(json.dumps({"concept": "temple", "description": "Here's", "raw": RAW,
                                  "text_field": "description"}) + "\n")
    assert load_descriptions(judged).by_concept == {"temple": ["Here's"]}
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({"concept": "t", "description": "d", "raw": "r", "text_field": f}) + "\n"
                             for f in ("raw", "description")))
    with pytest.raises(ValueError, match="judged on different texts"):
        load_descriptions(mixed)
