"""Leave-one-concept-out scoring of the embedded judge on a tiny crafted set, with a word-hashing
encoder in place of MiniLM (fast; the real encoder's accuracy is in test_inspect_embedded.py)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from ex2.categorize import EmbeddedJudge, evaluate, loco_judgements, score_judgements
from ex2.judges import Judgement


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


RECORDS = [
    record("alpha", "It is bright red and yellow in colour.", "visual", "color"),
    record("alpha", "It lives in forests and wetlands.", "non_visual", "habitat"),
    record("alpha", "Click to enlarge the photo.", "spurious", "none"),
    record("beta", "Its wings, tail and beak are short.", "visual", "parts"),
    record("beta", "It eats seeds and insects.", "non_visual", "diet"),
    record("gamma", "Stock photo wallpaper download.", "spurious", "none"),
    record("gamma", "It is used to carry loads and used for farm work.", "non_visual", "habitat"),  # label is wrong
    # no cue words: only exemplars decide, and the concept's own (shape) must be set aside
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
    assert (result["n"], result["concepts"]) == (9, 5)
    assert result["category_accuracy"] == 1.0
    # attributes right: color, habitat, none, parts, diet, none; wrong: use-for-habitat, texture/shape swapped
    assert result["attribute_accuracy_given_category"] == pytest.approx(6 / 9)
    per = result["per_attribute"]
    assert per["habitat"] == {"n": 2, "predicted": 1, "precision": 1.0, "recall": 0.5}
    assert per["use"] == {"n": 0, "predicted": 1, "precision": 0.0, "recall": None}
    assert per["shape"]["recall"] == 0.0 and per["color"]["precision"] == 1.0


def test_attribute_counts_only_with_the_right_category():
    records = [record("a", "x", "visual", "color"), record("b", "y", "non_visual", "use")]
    found = [Judgement(True, "visual", "color", "", "t", "t", "1"), Judgement(True, "visual", "parts", "", "t", "t", "1")]
    result = score_judgements(records, found)
    assert result["category_accuracy"] == 0.5 and result["attribute_accuracy_given_category"] == 1.0
    assert result["per_attribute"]["use"]["recall"] == 0.0 and result["per_attribute"]["parts"]["precision"] == 0.0
