"""The pure classifier functions of ex2.classify.zeroshot and the description loaders of ex2.classify.stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ex2.classify import zeroshot
from ex2.classify.descriptions import align_descriptions, load_descriptions
from ex2.classify.methods.waffle import waffle_vocabulary
from ex2.classify.stage import ClassifyConfig
from ex2.core.config import parse_config


def test_template_texts_fill_each_class_into_each_template():
    texts = zeroshot.template_texts(["cat", "sea lion"], ["a photo of a {}.", "art of the {}."])
    assert texts == [["a photo of a cat.", "art of the cat."], ["a photo of a sea lion.", "art of the sea lion."]]
    with pytest.raises(ValueError, match="no '{}'"):
        zeroshot.template_texts(["cat"], ["a photo"])


@pytest.mark.parametrize(
    ("descriptor", "sentence"),
    [
        ("four legs", "which has four legs"),
        ("has whiskers", "which has whiskers"),
        ("a small bird", "which is a small bird"),
        ("antlers", "which is antlers"),  # DCLIP's string-prefix rule, kept so their numbers reproduce
        ("used for hunting", "which is used for hunting"),
        ("often found in water", "which often found in water"),
        ("is black and white", "which has is black and white"),  # the raw string: nothing completed
        ("which barks", "which has which barks"),
        ("An eye", "which has An eye"),  # case-sensitive, as theirs
        ("", "which has "),
    ],
)
def test_dclip_descriptor_sentences_follow_their_rule(descriptor, sentence):
    assert zeroshot.descriptor_sentence(descriptor) == sentence


def test_dclip_texts_put_the_class_first():
    assert zeroshot.dclip_texts(["tench"], [["freshwater fish"]]) == [["tench, which has freshwater fish"]]


def test_waffle_descriptors_are_seeded_shared_and_shaped_like_class_names():
    words = ["alpha", "bravo", "charlie", "delta"]
    a = zeroshot.waffle_texts(["red fox", "grey wolf"], "both", 3, seed=1, vocabulary=words)
    b = zeroshot.waffle_texts(["red fox", "grey wolf"], "both", 3, seed=1, vocabulary=words)
    c = zeroshot.waffle_texts(["red fox", "grey wolf"], "both", 3, seed=2, vocabulary=words)
    assert a == b and a != c
    assert len(a[0]) == 6 and all(t.startswith("A photo of a red fox, which") for t in a[0])
    assert [t.replace("grey wolf", "red fox") for t in a[1]] == a[0]  # one random set for all classes
    chars = zeroshot.waffle_descriptors(["red fox"], "chars", 2, seed=0, vocabulary=[])
    assert all(len(d.split(", ")) == 2 for d in chars)  # two words, as in the class name
    assert len(waffle_vocabulary()) > 1000


def test_mean_score_pooling_equals_the_mean_of_per_text_similarities():
    torch.manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    owners = torch.tensor([0, 0, 0, 1, 1])
    images = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    weights = zeroshot.pool_classifier(texts, owners, 2, "mean_score")
    expected = torch.stack([(images @ texts[:3].T).mean(1), (images @ texts[3:].T).mean(1)], dim=1)
    assert weights.shape == (8, 2)
    assert torch.allclose(zeroshot.score(images, weights, 1.0), expected, atol=1e-6)
    merged = zeroshot.pool_classifier(texts, owners, 2, "mean_embedding")
    assert torch.allclose(merged.norm(dim=0), torch.ones(2))
    with pytest.raises(ValueError, match="no texts"):
        zeroshot.pool_classifier(texts, owners, 3)


def test_each_distinct_text_is_encoded_once_in_one_call():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return torch.nn.functional.normalize(torch.randn(len(texts), 4), dim=-1)

    sets = [[["a", "b"], ["b", "c"]], [["a"], ["c", "d"]]]
    first, second = zeroshot.encode_text_sets(encode, sets)
    assert calls == [["a", "b", "c", "d"]]
    assert first.shape == (4, 4) and second.shape == (3, 4)
    assert torch.equal(first[1], first[2]) and torch.equal(first[0], second[0])


def test_metrics_on_known_logits():
    logits = torch.tensor([[3.0, 2, 1, 0, 0, 0], [3, 2, 1, 0, 0, 0], [0, 1, 3, 0, 0, 0], [5, 5, -1, 5, 5, 9]])
    labels = torch.tensor([0, 1, 2, 2])
    metrics = zeroshot.classification_metrics(logits, labels)
    assert metrics["acc1"] == pytest.approx(0.5)
    assert metrics["acc5"] == pytest.approx(0.75)
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 0 + 0.5) / 3)  # classes without images ignored
    confusion = zeroshot.confusion_matrix(logits.argmax(1), labels, 6)
    assert confusion[1, 0] == 1 and confusion[2, 5] == 1 and confusion.sum() == 4


# --- description files --------------------------------------------------------------------------


def _records(rows):
    return "".join(json.dumps({"concept": c, "description": d, **extra}) + "\n" for c, d, extra in rows)


def test_jsonl_descriptions_record_provenance_and_filter_by_category(tmp_path):
    path = tmp_path / "categories.jsonl"
    path.write_text(_records([
        ("Cat", "A cat has whiskers.", {"category": "visual", "informative": True, "model": "m", "adapter": "a"}),
        ("Cat", "Cats were sacred in Egypt.", {"category": "non_visual", "informative": True, "model": "m"}),
        ("Cat", "Cat stock photo.", {"category": "spurious", "informative": False, "model": "m"}),
        ("Cat", "A cat has whiskers.", {"category": "visual", "informative": True, "model": "m"}),
    ]))
    everything = load_descriptions(path)
    assert everything.by_concept == {"Cat": ["A cat has whiskers.", "Cats were sacred in Egypt.", "Cat stock photo."]}
    assert everything.provenance["model"] == "m" and everything.provenance["adapter"] == "a"
    assert load_descriptions(path, ["visual"]).by_concept == {"Cat": ["A cat has whiskers."]}
    assert len(load_descriptions(path, ["informative"]).by_concept["Cat"]) == 2
    assert load_descriptions(path, ["spurious", "non_visual"]).by_concept["Cat"][0] == "Cats were sacred in Egypt."


def test_categories_come_from_the_sibling_inspection_file(tmp_path):
    (tmp_path / "descriptions.jsonl").write_text(_records([("cat", "whiskers", {})]))
    with pytest.raises(ValueError, match="lack the 'category' field"):
        load_descriptions(tmp_path / "descriptions.jsonl", ["visual"])
    (tmp_path / "categories.jsonl").write_text(_records([("cat", "whiskers", {"category": "visual"})]))
    assert load_descriptions(tmp_path / "descriptions.jsonl", ["visual"]).by_concept == {"cat": ["whiskers"]}


def test_dclip_json_descriptors_load_and_bad_files_say_what_was_expected(tmp_path):
    good = tmp_path / "descriptors.json"
    good.write_text(json.dumps({"sea_lion": ["flippers", "a wet nose"]}))
    assert load_descriptions(good).by_concept == {"sea_lion": ["flippers", "a wet nose"]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(["flippers"]))
    with pytest.raises(ValueError, match="bad.json: expected a JSON object mapping each class"):
        load_descriptions(bad)
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        load_descriptions(tmp_path / "missing.jsonl")


def test_concepts_match_class_names_ignoring_case_underscores_and_spaces(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"Sea_Lion ": ["flippers"], "cat": ["whiskers"]}))
    texts, missing = align_descriptions(["cat", "sea  lion"], load_descriptions(path))
    assert texts == [["whiskers"], ["flippers"]] and missing == []


def test_unknown_concepts_and_classes_without_descriptions_are_errors(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"cat": ["whiskers"], "zebra": ["stripes"], "dgo": ["barks"]}))
    with pytest.raises(ValueError, match=r"2 concept\(s\) match no class.*'zebra', 'dgo'"):
        align_descriptions(["cat", "dog"], load_descriptions(path))
    path.write_text(json.dumps({"cat": ["whiskers"], "dog": []}))
    with pytest.raises(ValueError, match=r"1 class\(es\) have no descriptions.*dog.*--allow-missing"):
        align_descriptions(["cat", "dog"], load_descriptions(path))
    texts, missing = align_descriptions(["cat", "dog"], load_descriptions(path), allow_missing=True)
    assert texts == [["whiskers"], []] and missing == ["dog"]


@pytest.mark.parametrize("name", ["classify", "classify_descriptions", "classify_dclip", "classify_waffle"])
def test_shipped_configs_parse(name):
    path = Path(__file__).parents[1] / "configs" / f"{name}.yaml"
    config = parse_config(ClassifyConfig, ["--config", str(path), "--descriptions", "d.jsonl"], "ex2 classify")
    assert config.output.startswith("runs/classify/")


def test_a_description_format_with_an_unknown_field_is_refused():
    with pytest.raises(ValueError, match="only {description} and {class}"):
        ClassifyConfig(method="ex2", descriptions="d.jsonl", description_format="{oops}")
    assert ClassifyConfig(method="ex2", descriptions="d.jsonl",
                          description_format="{class}: {description} {{x}}").description_format
