"""Error bars for ex2's findings: confidence intervals and paired tests.

Which interval where, and why:

accuracy of one run (:func:`proportion_interval`)
    Exact Clopper-Pearson interval of a binomial proportion (``scipy.stats.binomtest``): each test
    image is one independent trial of a fixed classifier, the interval never leaves [0, 1], keeps
    at least its stated coverage at every n (also at 0 or n correct, where the normal
    approximation collapses), and has no resampling noise: ``predictions.csv`` (its ``correct``
    column, or ``label`` within ``top5``) is all it takes to recompute it.
mean per-class recall (:func:`stratified_recall_interval`)
    A mean of per-class proportions is no binomial count: a percentile bootstrap that resamples
    images within each class (the classes keep their test-set sizes), seeded.
a mean over units, or a share over clustered units (:func:`mean_interval`)
    Percentile bootstrap (``scipy.stats.bootstrap``, seeded) that resamples whole clusters when
    they are given: the 25 descriptions of one concept share that concept, so they are not 25
    independent draws; resampling concepts keeps that dependence and widens the interval honestly.
    Without clusters each unit (image, prompt) is its own cluster.
a paired difference (:func:`paired_difference`, :func:`share_difference`)
    Two runs that saw the same images (or prompts, or concepts) are compared unit by unit: one
    percentile bootstrap draws units (clusters) once and takes both runs' means on that draw, so
    what the two have in common cancels. For accuracy the exact McNemar test (:func:`mcnemar`)
    adds a p-value from the discordant pairs alone.
seeds (:func:`mean_std`)
    A method with randomness run with several seeds: the mean and the population standard
    deviation (ddof 0, numpy's default, as WaffleCLIP reports it) of the per-seed values.

Every bootstrap here is seeded (``seed``, default 0), so a rerun gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 9999  # scipy.stats.bootstrap's default
SEED = 0
_BATCH_CELLS = 4_000_000  # resampled indices held at once (memory bound for scipy's batches)

CLOPPER_PEARSON = "Clopper-Pearson exact"
BOOTSTRAP = "percentile bootstrap"


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval (``low``/``high`` are None when there are too few
    units to resample) and how the interval was made."""

    estimate: float
    low: float | None
    high: float | None
    method: str
    level: float = LEVEL

    def excludes(self, value: float = 0.0) -> bool:
        """True when the interval lies wholly on one side of ``value`` (a difference that is a finding)."""
        return self.low is not None and self.high is not None and (self.low > value or self.high < value)

    def columns(self, name: str) -> dict[str, float | None]:
        """``{name: estimate, name_low: low, name_high: high}`` for a table or a metrics file."""
        return {name: self.estimate, f"{name}_low": self.low, f"{name}_high": self.high}

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "method": self.method,
                "level": self.level}

    def format(self, digits: int = 3, sign: bool = False) -> str:
        """``0.875 [0.781, 0.938]``; ``sign`` writes ``+`` before a positive estimate (a difference)."""
        spec = f"{'+' if sign else ''}.{digits}f"
        if self.low is None or self.high is None:
            return f"{self.estimate:{spec}} [no interval]"
        return f"{self.estimate:{spec}} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


# --- exact intervals and tests -------------------------------------------------------------------


def proportion_interval(successes: int, n: int, level: float = LEVEL) -> Interval:
    """Clopper-Pearson interval of ``successes / n`` (see the module docstring)."""
    from scipy.stats import binomtest

    if n < 1:
        raise ValueError(f"a proportion needs at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="exact")
    return Interval(successes / n, float(ci.low), float(ci.high), CLOPPER_PEARSON, level)


def accuracy_interval(correct: Sequence[bool] | np.ndarray, level: float = LEVEL) -> Interval:
    """Clopper-Pearson interval of the share of ``correct`` images."""
    hits = np.asarray(correct, dtype=bool)
    return proportion_interval(int(hits.sum()), hits.size, level)


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of two classifiers on the same images.

    ``only_before``: images the first got right and the second wrong; ``only_after``: the reverse.
    Under the null hypothesis (equal accuracy) each discordant image is a fair coin, so the
    two-sided p-value is ``binomtest(only_after, only_before + only_after, 0.5)``; 1.0 without
    discordant images."""

    only_before: int
    only_after: int
    p_value: float


def mcnemar(before_correct: Sequence[bool] | np.ndarray, after_correct: Sequence[bool] | np.ndarray) -> McNemar:
    """The exact McNemar test (binomial test on the discordant pairs) of two runs over the same images."""
    from scipy.stats import binomtest

    before, after = _paired(before_correct, after_correct, bool)
    only_before, only_after = int((before & ~after).sum()), int((~before & after).sum())
    discordant = only_before + only_after
    p = binomtest(only_after, discordant, 0.5).pvalue if discordant else 1.0
    return McNemar(only_before, only_after, float(p))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0) of per-seed values."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(array.mean()), float(array.std())


# --- bootstrap -----------------------------------------------------------------------------------


def _paired(a, b, dtype=float) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=dtype).ravel(), np.asarray(b, dtype=dtype).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need one value per unit in both runs, got {a.size} and {b.size}")
    return a, b


def _cluster_ids(clusters: Sequence[Hashable] | None, n: int) -> tuple[np.ndarray, int]:
    """Each unit's cluster as 0..K-1 (every unit its own cluster without ``clusters``) and K."""
    if clusters is None:
        return np.arange(n), n
    if len(clusters) != n:
        raise ValueError(f"{len(clusters)} cluster labels for {n} values")
    index: dict[Hashable, int] = {}
    ids = np.array([index.setdefault(c, len(index)) for c in clusters], dtype=np.int64)
    return ids, len(index)


def _sums(values: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sum of the values and number of units, ``[K]`` each."""
    return np.bincount(ids, weights=values, minlength=k), np.bincount(ids, minlength=k).astype(float)


def bootstrap_clusters(statistic: Callable[[np.ndarray], np.ndarray], n_clusters: int, level: float = LEVEL,
                       resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float | None, float | None]:
    """Percentile interval of ``statistic(draws)``, where ``draws [..., K]`` are cluster indices drawn
    with replacement (``scipy.stats.bootstrap``, seeded); ``(None, None)`` below two clusters."""
    from scipy.stats import bootstrap

    if n_clusters < 2:
        return None, None
    result = bootstrap((np.arange(n_clusters),), lambda draws, axis=-1: statistic(draws), vectorized=True,
                       n_resamples=resamples, batch=max(1, _BATCH_CELLS // n_clusters), confidence_level=level,
                       method="percentile", rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return (None, None) if math.isnan(low) or math.isnan(high) else (low, high)


def mean_interval(values: Sequence[float] | np.ndarray, clusters: Sequence[Hashable] | None = None,
                  level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The mean of ``values`` (a share, for 0/1 values) with a percentile bootstrap interval that
    resamples ``clusters`` (e.g. each description's concept) or, without them, single values."""
    array = np.asarray(values, dtype=float).ravel()
    if array.size == 0:
        raise ValueError("mean_interval needs at least one value")
    ids, k = _cluster_ids(clusters, array.size)
    total, count = _sums(array, ids, k)
    low, high = bootstrap_clusters(lambda d: total[d].sum(-1) / count[d].sum(-1), k, level, resamples, seed)
    return Interval(float(array.mean()), low, high, _bootstrap_name(clusters), level)


def paired_difference(before: Sequence[float] | np.ndarray, after: Sequence[float] | np.ndarray,
                      clusters: Sequence[Hashable] | None = None, level: float = LEVEL,
                      resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """``mean(after) - mean(before)`` over the same units (``before[i]`` and ``after[i]`` belong to
    unit ``i``: an image, a prompt's sample), with a paired percentile bootstrap that draws units,
    or their ``clusters`` (the prompt of several samples), once for both."""
    a, b = _paired(before, after)
    if a.size == 0:
        raise ValueError("paired_difference needs at least one unit")
    ids, k = _cluster_ids(clusters, a.size)
    total, count = _sums(b - a, ids, k)
    low, high = bootstrap_clusters(lambda d: total[d].sum(-1) / count[d].sum(-1), k, level, resamples, seed)
    return Interval(float(b.mean() - a.mean()), low, high, "paired " + _bootstrap_name(clusters), level)


def share_difference(before: Sequence[float] | np.ndarray, before_clusters: Sequence[Hashable],
                     after: Sequence[float] | np.ndarray, after_clusters: Sequence[Hashable],
                     level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """``mean(after) - mean(before)`` of two sets of units that are not matched one to one but share
    their clusters (base and aligned descriptions of the same concepts): each bootstrap draw takes
    concepts with replacement and both shares over the drawn concepts. Only concepts present in
    both sets count (a concept one side lacks cannot be compared)."""
    a, b = np.asarray(before, dtype=float).ravel(), np.asarray(after, dtype=float).ravel()
    if len(before_clusters) != a.size or len(after_clusters) != b.size:
        raise ValueError("share_difference needs one cluster label per value on each side")
    common = sorted(set(before_clusters) & set(after_clusters), key=str)
    if not common:
        raise ValueError("the two sets share no cluster (concept): nothing to compare")
    index = {c: i for i, c in enumerate(common)}
    keep_a = np.array([c in index for c in before_clusters])
    keep_b = np.array([c in index for c in after_clusters])
    ids_a = np.array([index[c] for c in before_clusters if c in index], dtype=np.int64)
    ids_b = np.array([index[c] for c in after_clusters if c in index], dtype=np.int64)
    total_a, count_a = _sums(a[keep_a], ids_a, len(common))
    total_b, count_b = _sums(b[keep_b], ids_b, len(common))

    def statistic(draws: np.ndarray) -> np.ndarray:
        return total_b[draws].sum(-1) / count_b[draws].sum(-1) - total_a[draws].sum(-1) / count_a[draws].sum(-1)

    low, high = bootstrap_clusters(statistic, len(common), level, resamples, seed)
    estimate = float(total_b.sum() / count_b.sum() - total_a.sum() / count_a.sum())
    return Interval(estimate, low, high, f"{BOOTSTRAP} over clusters, paired by cluster", level)


def stratified_recall_interval(correct: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                               level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """Mean per-class recall with a percentile bootstrap that resamples images within each class.

    ``correct`` may be fractions (an image's share of seeds that got it right). For 0/1 values a
    class of ``n`` images with ``k`` right resamples to ``Binomial(n, k/n)`` right, which is what
    drawing its images with replacement gives; fractions are drawn image by image."""
    values = np.asarray(correct, dtype=float).ravel()
    classes = np.asarray(labels).ravel()
    if values.size != classes.size or values.size == 0:
        raise ValueError(f"need one label per value and at least one value, got {values.size} and {classes.size}")
    rng = np.random.default_rng(seed)
    groups = [values[classes == c] for c in np.unique(classes)]
    estimate = float(np.mean([g.mean() for g in groups]))
    if all(g.size < 2 for g in groups):
        return Interval(estimate, None, None, f"{BOOTSTRAP} within classes", level)
    binary = bool(np.isin(values, (0.0, 1.0)).all())
    recalls = np.empty((resamples, len(groups)))
    for j, group in enumerate(groups):
        if binary:
            recalls[:, j] = rng.binomial(group.size, group.mean(), size=resamples) / group.size
        else:
            for start in range(0, resamples, max(1, _BATCH_CELLS // group.size)):
                stop = min(resamples, start + max(1, _BATCH_CELLS // group.size))
                recalls[start:stop, j] = group[rng.integers(0, group.size, (stop - start, group.size))].mean(1)
    tail = (1 - level) / 2
    low, high = np.quantile(recalls.mean(1), [tail, 1 - tail])
    return Interval(estimate, float(low), float(high), f"{BOOTSTRAP} within classes", level)


def _bootstrap_name(clusters) -> str:
    return f"{BOOTSTRAP} over clusters" if clusters is not None else f"{BOOTSTRAP} over units"


# --- classification metrics ----------------------------------------------------------------------


def classification_intervals(top1: np.ndarray, labels: np.ndarray, top5: np.ndarray | None = None,
                             level: float = LEVEL, seed: int = SEED) -> dict:
    """Interval columns of ``acc1``, ``acc5`` and ``mean_per_class_recall`` (CLIP_benchmark's keys).

    ``top1``/``top5``: whether each image's label is the best class / among the five best, ``[N]``
    for one run or ``[S, N]`` for S seeds. One run: Clopper-Pearson for the accuracies; seeds: the
    accuracy averaged over seeds, a percentile bootstrap over images of each image's share of seeds
    right. Mean per-class recall: a bootstrap within classes (:func:`stratified_recall_interval`)."""
    hits1 = np.atleast_2d(np.asarray(top1, dtype=float))
    seeds = hits1.shape[0]
    out: dict = {"interval": {"level": level}}
    parts = [("acc1", hits1), ("acc5", None if top5 is None else np.atleast_2d(np.asarray(top5, dtype=float)))]
    for name, hits in parts:
        if hits is None or hits.shape[1] == 0:
            out |= {f"{name}_low": None, f"{name}_high": None}
            continue
        found = (proportion_interval(int(hits[0].sum()), hits.shape[1], level) if seeds == 1
                 else mean_interval(hits.mean(0), level=level, seed=seed))
        out |= {f"{name}_low": found.low, f"{name}_high": found.high}
        out["interval"][name] = found.method
    if hits1.shape[1]:
        recall = stratified_recall_interval(hits1.mean(0), labels, level, seed=seed)
        out |= {"mean_per_class_recall_low": recall.low, "mean_per_class_recall_high": recall.high}
        out["interval"]["mean_per_class_recall"] = recall.method
    return out
