"""Signs of reward hacking, measured on crafted texts."""

from __future__ import annotations

import pytest

from ex2.report.stats import distinct_n, hacking_signs, is_degenerate, is_header, is_name_only, smooth, words


def test_headers_are_texts_opening_with_a_line_ending_in_a_colon():
    assert is_header("Here's a description of a cardinal:")
    assert is_header("Here's a possible poem about a temple:\n\nStone steps, incense.")  # a raw completion
    assert is_header("Sure, here it is: \nA red songbird.")
    assert not is_header("A red songbird.\nIts crest looks like this:")
    assert is_header("  Sure! A cardinal looks like this:  ")
    assert not is_header("A cardinal: a red songbird with a crest.")
    assert not is_header("")


def test_degenerate_texts_are_empty_wordless_or_one_word_repeated():
    for text in ("", "   ", "...!?", "red red red", "Bird. bird, BIRD"):
        assert is_degenerate(text), text
    for text in ("red", "a red bird", "red red crest"):
        assert not is_degenerate(text), text


def test_name_only_texts_say_nothing_but_the_concept():
    assert is_name_only("Cardinal.", "cardinal")
    assert is_name_only("This is a cardinal. Cardinals!", "cardinal")  # plural and filler words
    assert is_name_only("A photo of a golden retriever", "golden retriever")
    assert not is_name_only("A cardinal has a red crest.", "cardinal")
    assert not is_name_only("A small red bird.", "cardinal")  # does not name it at all


def test_distinct_n_counts_distinct_ngrams_over_all_of_them():
    assert distinct_n(["a red bird", "a red crest"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["a red bird", "a red crest"], 2) == pytest.approx(3 / 4)
    assert distinct_n(["same words", "same words"], 2) == pytest.approx(1 / 2)
    assert distinct_n(["one"], 2) == 0.0 and distinct_n([], 1) == 0.0


def test_hacking_signs_over_a_set_of_texts():
    texts = ["Here's a cardinal:", "", "Cardinal.", "A red bird with a black mask and a crest."]
    signs = hacking_signs(texts, ["cardinal"] * 4)
    assert signs["n"] == 4
    assert signs["header_share"] == 0.25 and signs["degenerate_share"] == 0.25 and signs["name_only_share"] == 0.25
    assert signs["mean_words"] == pytest.approx((3 + 0 + 1 + 10) / 4)
    assert signs["distinct_1"] == pytest.approx(len(set(words(" ".join(texts)))) / 14)
    assert hacking_signs([], [])["header_share"] == 0.0
    with pytest.raises(ValueError, match="2 texts but 1 concepts"):
        hacking_signs(["a", "b"], ["c"])


def test_smooth_is_a_trailing_mean():
    assert smooth([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth([2.0] * 40) == [2.0] * 40
    assert smooth([]) == []
