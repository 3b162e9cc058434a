"""Confidence intervals and paired tests: coverage on seeded simulations, McNemar by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ex2.core import intervals

REPEATS = 300  # simulated studies per coverage check (the bounds below are loose for this many)


def test_clopper_pearson_covers_the_true_accuracy_at_least_at_the_stated_rate():
    rng = np.random.default_rng(0)
    p, n = 0.85, 80
    hits = [intervals.proportion_interval(int(k), n) for k in rng.binomial(n, p, size=2000)]
    coverage = np.mean([i.low <= p <= i.high for i in hits])
    assert 0.945 <= coverage <= 0.995  # exact: never below 95 %, a little above (conservative)
    edge = intervals.proportion_interval(0, 20)
    assert edge.low == 0.0 and 0.1 < edge.high < 0.2  # defined where the normal approximation collapses


def test_accuracy_interval_is_the_exact_binomial_one_of_the_correct_images():
    found = intervals.accuracy_interval([True] * 7 + [False] * 3)
    assert found.estimate == pytest.approx(0.7) and found.method == intervals.CLOPPER_PEARSON
    assert (found.low, found.high) == pytest.approx((0.3475471499, 0.9332604888))  # Clopper & Pearson's tables
    with pytest.raises(ValueError, match="at least one trial"):
        intervals.proportion_interval(0, 0)


def test_paired_bootstrap_covers_a_known_accuracy_difference():
    """Two classifiers scored on the same images, their errors correlated through image difficulty."""
    rng = np.random.default_rng(1)
    n, truth, covered, widths = 120, 0.05, 0, []
    for repeat in range(REPEATS):
        difficulty = rng.random(n)
        before = difficulty < 0.75
        after = difficulty < 0.80  # right wherever before is, and on 5 % more
        interval = intervals.paired_difference(before, after, resamples=999, seed=repeat)
        covered += interval.low <= truth <= interval.high
        widths.append(interval.high - interval.low)
    assert 0.88 <= covered / REPEATS <= 0.99
    unpaired = 2 * 1.96 * math.sqrt(2 * 0.78 * 0.22 / n)  # what two independent samples would need
    assert np.mean(widths) < 0.6 * unpaired  # pairing cancels what the runs share


def _concept_descriptions(rng, concepts: int, per_concept: int, mean: float = 0.6):
    """Descriptions clustered by concept: each concept has its own informative rate."""
    rates = rng.beta(2 * mean / (1 - mean), 2, size=concepts)  # Beta(a, 2) has mean a / (a + 2) = mean
    values = (rng.random((concepts, per_concept)) < rates[:, None]).astype(float).ravel()
    return values, np.repeat(np.arange(concepts), per_concept), rates


def test_shares_resampled_by_concept_cover_and_ignoring_concepts_does_not():
    rng = np.random.default_rng(2)
    mean, by_concept, by_description = 0.6, 0, 0
    for repeat in range(REPEATS):
        values, concepts, _ = _concept_descriptions(rng, concepts=30, per_concept=20, mean=mean)
        clustered = intervals.mean_interval(values, concepts, resamples=999, seed=repeat)
        by_concept += clustered.low <= mean <= clustered.high
        naive = intervals.mean_interval(values, resamples=999, seed=repeat)
        by_description += naive.low <= mean <= naive.high
    assert 0.87 <= by_concept / REPEATS <= 0.99
    assert by_description / REPEATS < 0.8  # 25 texts of one concept are not 25 independent draws


def test_share_difference_resamples_concepts_for_both_sets_and_covers_the_truth():
    rng = np.random.default_rng(3)
    shift, covered = 0.1, 0
    for repeat in range(REPEATS):
        base, concepts, rates = _concept_descriptions(rng, concepts=30, per_concept=20, mean=0.5)
        aligned = (rng.random(base.size) < np.repeat(np.clip(rates + shift, 0, 1), 20)).astype(float)
        found = intervals.share_difference(base, concepts, aligned, concepts, resamples=999, seed=repeat)
        covered += found.low <= shift <= found.high
    assert 0.85 <= covered / REPEATS <= 0.99


def test_share_difference_compares_only_the_concepts_both_sets_have():
    found = intervals.share_difference([1, 1, 0, 0], ["a", "a", "b", "b"], [1, 1, 1], ["a", "b", "z"])
    assert found.estimate == pytest.approx(1.0 - 0.5)  # "z" is left out
    with pytest.raises(ValueError, match="share no cluster"):
        intervals.share_difference([1], ["a"], [1], ["b"])


def test_exact_mcnemar_equals_the_binomial_tail_computed_by_hand():
    # 10 images: 3 both right, 1 only before, 6 only after; no image wrong in both
    before = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    after = [1, 1, 1, 0, 1, 1, 1, 1, 1, 1]
    test = intervals.mcnemar(before, after)
    assert (test.only_before, test.only_after) == (1, 6)
    by_hand = 2 * (math.comb(7, 0) + math.comb(7, 1)) / 2 ** 7  # two-sided: twice the smaller tail, 0.125
    assert test.p_value == pytest.approx(by_hand) == pytest.approx(0.125)
    assert intervals.mcnemar([1, 0], [1, 0]).p_value == 1.0  # no discordant image: no evidence
    with pytest.raises(ValueError, match="one value per unit"):
        intervals.mcnemar([1, 0], [1])


def test_mean_per_class_recall_resampled_within_classes():
    correct = [1, 1, 1, 0, 1, 0, 0, 0]
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    found = intervals.stratified_recall_interval(correct, labels)
    assert found.estimate == pytest.approx((0.75 + 0.25) / 2)
    assert found.low < found.estimate < found.high
    assert found == intervals.stratified_recall_interval(correct, labels)  # seeded
    seed_means = intervals.stratified_recall_interval([0.5, 1.0, 0.0, 1.0], [0, 0, 1, 1])
    assert seed_means.estimate == pytest.approx(0.625) and seed_means.low <= seed_means.high


def test_paired_difference_resamples_prompts_not_samples_when_told():
    rng = np.random.default_rng(4)
    prompts = np.repeat(np.arange(20), 2)  # two samples per prompt
    effect = np.repeat(rng.normal(0, 3, 20), 2)
    before, after = rng.normal(30, 1, 40), rng.normal(31, 1, 40) + effect
    by_prompt = intervals.paired_difference(before, after, prompts)
    by_sample = intervals.paired_difference(before, after)
    assert by_prompt.estimate == by_sample.estimate
    assert by_prompt.high - by_prompt.low > by_sample.high - by_sample.low
    assert "clusters" in by_prompt.method


def test_intervals_read_and_print_as_findings_or_noise():
    finding = intervals.Interval(0.05, 0.01, 0.09, "x")
    noise = intervals.Interval(0.02, -0.01, 0.05, "x")
    assert finding.excludes(0) and not noise.excludes(0)
    assert finding.format(sign=True) == "+0.050 [0.010, 0.090]"
    assert finding.columns("acc1") == {"acc1": 0.05, "acc1_low": 0.01, "acc1_high": 0.09}
    assert intervals.mean_interval([1.0]).low is None  # one unit: nothing to resample
    assert intervals.mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1))  # ddof 0, as WaffleCLIP
