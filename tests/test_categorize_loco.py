"""Leave-one-concept-out scoring of the embedded judge on a tiny crafted set, with a word-hashing
encoder in place of MiniLM (fast; the real encoder's accuracy is in test_inspect_embedded.py)."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from ex2.core.io import read_jsonl
from ex2.inspect.categorize import (
    LABELS,
    SPLITS,
    EmbeddedJudge,
    check_exemplars,
    cue_counts,
    cue_vector,
    evaluate,
    labelled_path,
    loco_judgements,
    score_judgements,
    stemmed,
)
from ex2.inspect.judges import Judgement


class WordsEncoder:
    """One dimension per hashed word, normalised: identical texts 1, disjoint texts 0."""

    def encode(self, texts, **kwargs):
        out = np.zeros((len(texts), 1024), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace(".", " ").split():
                out[row, zlib.crc32(word.encode()) % 1024] = 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


def record(concept, description, category, attribute):
    return {"concept": concept, "description": description, "category": category, "attribute": attribute}


TWINS = [  # two concepts described alike: leave-one-concept-out, each learns from the other
    ("It is bright red and yellow in colour.", "visual", "color"),
    ("It lives in forests and wetlands.", "non_visual", "habitat"),
    ("Click to enlarge the photo.", "spurious", "none"),
    ("Its wings, tail and beak are short.", "visual", "parts"),
    ("It eats seeds and insects.", "non_visual", "diet"),
]
RECORDS = [
    *(record(concept, *twin) for concept in ("alpha", "beta") for twin in TWINS),
    # one text, two labels: each concept is told the other's (gamma's label is the wrong one)
    record("gamma", "It is used to carry loads and used for farm work.", "non_visual", "habitat"),
    record("gamma2", "It is used to carry loads and used for farm work.", "non_visual", "use"),
    # the concept's own label (shape) must be set aside
    record("delta", "xyzzy plugh frobozz.", "visual", "shape"),
    record("epsilon", "xyzzy plugh frobozz.", "visual", "texture"),
]


@pytest.fixture(scope="module")
def judge():
    return EmbeddedJudge(exemplars=RECORDS, encoder=WordsEncoder())


def test_loco_sets_the_concepts_own_exemplars_aside(judge):
    found = loco_judgements(RECORDS, judge)
    assert [j.attribute for j in found[-2:]] == ["texture", "shape"]  # each took the other concept's label
    own = judge.judge_batch([("delta", "xyzzy plugh frobozz.")])[0]  # without LOCO its own exemplar votes too
    assert own.category == "visual"


def test_scores_count_category_attribute_and_per_attribute_precision_recall(judge):
    result = evaluate(records=RECORDS, judge=judge)
    assert (result["n"], result["concepts"]) == (14, 6)
    assert result["category_accuracy"] == 1.0
    # right: the twins' ten; wrong: gamma and gamma2 (habitat/use swapped), delta and epsilon (shape/texture)
    assert result["attribute_accuracy_given_category"] == pytest.approx(10 / 14)
    per = result["per_attribute"]
    assert per["habitat"] == {"n": 3, "predicted": 3, "precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3)}
    assert per["use"] == {"n": 1, "predicted": 1, "precision": 0.0, "recall": 0.0}
    assert per["shape"]["recall"] == 0.0 and per["color"]["precision"] == 1.0


def test_a_label_no_exemplar_carries_is_never_said(judge):
    probabilities = judge.classifier().probabilities(*_features(judge, "It is pink."))
    assert probabilities.shape == (1, len(LABELS)) and probabilities.sum() == pytest.approx(1.0)
    assert probabilities[0, LABELS.index("origin")] == 0.0  # no exemplar is about origin


def _features(judge, text):
    vectors = judge.encoder.encode([text])
    return vectors, [stemmed(text)], np.array([cue_vector(cue_counts(text))])


def test_exemplars_whose_attribute_is_not_their_categorys_are_refused():
    bad = [*RECORDS[:3], record("zeta", "It is round.", "non_visual", "shape")]
    with pytest.raises(ValueError, match=r"exemplar 4 \('zeta'\).*'non_visual' and attribute 'shape'"):
        EmbeddedJudge(exemplars=bad, encoder=WordsEncoder())


def test_the_labelled_file_is_well_formed():
    """Every record: a known split, a category and an attribute of the taxonomy's, informative to match."""
    records = read_jsonl(labelled_path(), required=("concept", "description", "category", "attribute"))
    check_exemplars(records, str(labelled_path()))
    assert {r.get("split", "seed") for r in records} <= set(SPLITS)
    assert all(r["informative"] == (r["category"] != "spurious") for r in records)
    descriptions = [r["description"] for r in records]
    assert len(set(descriptions)) == len(descriptions), "a description is labelled twice"
    concepts = {split: {r["concept"] for r in records if r.get("split", "seed") == split} for split in SPLITS}
    for a, b in itertools.combinations(SPLITS, 2):
        assert not concepts[a] & concepts[b], f"concepts in both {a} and {b}: {concepts[a] & concepts[b]}"


def test_attribute_counts_only_with_the_right_category():
    records = [record("a", "x", "visual", "color"), record("b", "y", "non_visual", "use")]
    found = [Judgement(True, "visual", "color", "", "t", "t", "1"), Judgement(True, "visual", "parts", "", "t", "t", "1")]
    result = score_judgements(records, found)
    assert result["category_accuracy"] == 0.5 and result["attribute_accuracy_given_category"] == 1.0
    assert result["per_attribute"]["use"]["recall"] == 0.0 and result["per_attribute"]["parts"]["precision"] == 0.0
