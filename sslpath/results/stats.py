"""Uncertainty of test metrics: stratified percentile bootstrap, paired comparisons, McNemar's test and
intervals over seeds (docs/evidence.md).

Everything is computed from per-tile labels and class probabilities. A bootstrap resample is a vector of
counts (how often each test tile was drawn), so a metric over B resamples is one matrix product over a
N × B weight matrix (tiles × resamples): 1,000 resamples of a few hundred tiles take milliseconds. Resamples are stratified by
class (each class keeps its tile count), so every resample has the same classes as the test split and
balanced accuracy and macro AUC are defined in each. Seeded: the same predictions and settings always give
the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

CHUNK_ELEMENTS = 1 << 21  # resamples are drawn in chunks of at most this many N × B weights (16 MiB of float64)


# What a user may ask for (conf/eval/default.yaml, sslpath.report's flags): fewer resamples make the
# interval's own Monte Carlo error visible; levels outside these are not intervals a reader can use.
RESAMPLES_RANGE = (1000, 100_000)
LEVEL_RANGE = (0.5, 0.999)
SEED_RANGE = (0, 2**32 - 1)


@dataclass(frozen=True)
class Bootstrap:
    """Settings of a percentile bootstrap; the defaults are conf/eval/default.yaml's."""

    resamples: int = 1000
    seed: int = 0
    level: float = 0.95

    def __post_init__(self) -> None:
        if not (isinstance(self.resamples, int) and self.resamples >= 1):
            raise ValueError(f"resamples={self.resamples!r} must be a positive integer")
        if not 0 < self.level < 1:
            raise ValueError(f"level={self.level!r} must lie strictly between 0 and 1")

    def to_dict(self) -> dict[str, float | int]:
        """As recorded in metrics.json (`bootstrap`), so a reader knows how each interval was made."""
        return {"resamples": self.resamples, "seed": self.seed, "level": self.level}


Interval = tuple[float, float]


def _check(labels: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError("labels must be a non-empty 1-D array of class indices >= 0")
    if probs is not None and (probs.ndim != 2 or len(probs) != len(labels) or probs.shape[1] <= labels.max()):
        raise ValueError(f"probs of shape {probs.shape} do not match {len(labels)} labels of {labels.max() + 1}+ classes")
    return labels


def resample_weights(labels: np.ndarray, resamples: int, seed: int | np.random.SeedSequence) -> Iterator[np.ndarray]:
    """Stratified bootstrap resamples as count vectors: chunks of N × B arrays, column b's entry i saying
    how often tile i was drawn in resample b. Within each class, n_c tiles are drawn with replacement from
    its n_c. Tiles are rows, so gathering tiles copies contiguous rows."""
    labels = _check(labels)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    chunk = max(1, CHUNK_ELEMENTS // len(labels))
    for start in range(0, resamples, chunk):
        cols = min(chunk, resamples - start)
        weights = np.empty((len(labels), cols))
        for idx in members:
            draws = rng.integers(0, len(idx), size=(cols, len(idx))) + np.arange(cols)[:, None] * len(idx)
            weights[idx] = np.bincount(draws.ravel(), minlength=cols * len(idx)).reshape(cols, len(idx)).T
        yield weights


def percentile_interval(values: np.ndarray, level: float) -> Interval:
    """The central `level` share of the bootstrap distribution (the percentile interval)."""
    tail = (1 - level) / 2
    lo, hi = np.quantile(np.asarray(values, dtype=float), [tail, 1 - tail])
    return float(lo), float(hi)


# ------------------------------------------------------------------------------------------------
# Metrics of weighted tiles: one column of weights per resample (a column of ones is the test split itself)


def _accuracy(weights: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Weighted mean of `correct` per column. einsum's own loop, not BLAS: a multithreaded BLAS on a busy
    machine made this 50 times slower."""
    return np.einsum("n,nb->b", correct, weights) / weights.sum(axis=0)


def _balanced_accuracy(weights: np.ndarray, labels: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present in the labels (as sklearn's balanced_accuracy_score)."""
    recalls = [_accuracy(weights[labels == c], correct[labels == c]) for c in np.unique(labels)]
    return np.mean(recalls, axis=0)


class _Ranking(NamedTuple):
    """One class's one-vs-rest ordering, computed once for all resamples."""

    positive: np.ndarray  # the class's tiles
    negatives: np.ndarray  # the other tiles, by ascending score
    below: np.ndarray  # per positive tile: how many negatives score lower
    upto: np.ndarray  # … lower or the same


def _rankings(labels: np.ndarray, probs: np.ndarray) -> list[_Ranking] | None:
    classes = np.unique(labels)
    if len(classes) < 2:
        return None
    rankings = []
    for c in classes:
        positive, negative = np.flatnonzero(labels == c), np.flatnonzero(labels != c)
        negatives = negative[np.argsort(probs[negative, c], kind="stable")]
        scores, query = probs[negatives, c], probs[positive, c]
        below, upto = np.searchsorted(scores, query, side="left"), np.searchsorted(scores, query, side="right")
        rankings.append(_Ranking(positive, negatives, below, upto))
    return rankings


def _macro_auc(weights: np.ndarray, rankings: list[_Ranking]) -> np.ndarray:
    """One-vs-rest ROC AUC averaged over the present classes. Per class the Mann-Whitney statistic, a tie
    counting one half: each positive tile wins the weight of the negatives scored below it (cumulative
    weights over the negatives sorted by score) plus half of those scored the same."""
    total = np.zeros(weights.shape[1])
    for r in rankings:
        cumulative = np.zeros((len(r.negatives) + 1, weights.shape[1]))
        np.cumsum(weights[r.negatives], axis=0, out=cumulative[1:])
        lower = cumulative[r.below]
        wins = (weights[r.positive] * (lower + 0.5 * (cumulative[r.upto] - lower))).sum(axis=0)
        total += wins / (weights[r.positive].sum(axis=0) * cumulative[-1])
    return total / len(rankings)


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    labels = _check(labels)
    return float(_accuracy(np.ones((len(labels), 1)), (np.asarray(preds) == labels).astype(float))[0])


def balanced_accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    labels = _check(labels)
    correct = (np.asarray(preds) == labels).astype(float)
    return float(_balanced_accuracy(np.ones((len(labels), 1)), labels, correct)[0])


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    labels = _check(labels, np.asarray(probs))
    rankings = _rankings(labels, np.asarray(probs, dtype=float))
    return None if rankings is None else float(_macro_auc(np.ones((len(labels), 1)), rankings)[0])


def bootstrap_intervals(labels: np.ndarray, probs: np.ndarray, bootstrap: Bootstrap) -> dict[str, Interval | None]:
    """Percentile intervals of accuracy, balanced accuracy and macro AUC (None with one class present),
    from the same stratified resamples of the test tiles."""
    probs = np.asarray(probs, dtype=float)
    labels = _check(labels, probs)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    rankings = _rankings(labels, probs)
    draws: dict[str, list[np.ndarray]] = {"acc": [], "balanced_acc": [], "auc": []}
    for weights in resample_weights(labels, bootstrap.resamples, bootstrap.seed):
        draws["acc"].append(_accuracy(weights, correct))
        draws["balanced_acc"].append(_balanced_accuracy(weights, labels, correct))
        if rankings is not None:
            draws["auc"].append(_macro_auc(weights, rankings))
    return {key: percentile_interval(np.concatenate(v), bootstrap.level) if v else None for key, v in draws.items()}


def score_intervals(labels: np.ndarray, scores: dict[str, np.ndarray], bootstrap: Bootstrap) -> dict[str, Interval]:
    """Percentile intervals of several mean per-tile scores from the same stratified resamples: a score is
    a tile's correctness (0 or 1) or its mean correctness over conditions (e.g. corruptions × severities),
    so the interval of a mean accuracy over conditions keeps each tile's difficulty shared across them."""
    draws = resampled_metrics(labels, bootstrap, scores=scores)
    return {key: percentile_interval(values, bootstrap.level) for key, values in draws.items()}


def resampled_metrics(
    labels: np.ndarray,
    bootstrap: Bootstrap,
    scores: Mapping[str, np.ndarray] | None = None,
    probs: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Each per-tile score's weighted mean (an accuracy) and each N × C probability matrix's macro AUC on
    every stratified resample: `bootstrap.resamples` values per key, resample b the same tiles for every key,
    so draws pair up across keys (a ratio of two accuracies per resample is the ratio's paired bootstrap). A
    matrix with fewer than two classes present has no AUC and no entry."""
    labels = _check(labels)
    scores, probs = dict(scores or {}), dict(probs or {})
    if set(scores) & set(probs):
        raise ValueError(f"keys {sorted(set(scores) & set(probs))} name both a score and a probability matrix")
    for key, values in scores.items():
        if np.shape(values) != labels.shape:
            raise ValueError(f"score {key!r} must have one entry per label")
    values = {key: np.asarray(v, dtype=float) for key, v in scores.items()}
    rankings = {}
    for key, p in probs.items():
        p = np.asarray(p, dtype=float)
        ranking = _rankings(_check(labels, p), p)
        if ranking is not None:
            rankings[key] = ranking
    draws: dict[str, list[np.ndarray]] = {key: [] for key in [*values, *rankings]}
    for weights in resample_weights(labels, bootstrap.resamples, bootstrap.seed):
        for key, v in values.items():
            draws[key].append(_accuracy(weights, v))
        for key, r in rankings.items():
            draws[key].append(_macro_auc(weights, r))
    return {key: np.concatenate(v) for key, v in draws.items()}


# ------------------------------------------------------------------------------------------------
# Two models on the same tiles; one model on two sets of tiles


def paired_accuracy_difference(
    labels: np.ndarray, correct_a: np.ndarray, correct_b: np.ndarray, bootstrap: Bootstrap
) -> tuple[float, Interval]:
    """Accuracy of A minus accuracy of B and its paired percentile interval: both models are scored on
    the same resampled tiles, so the interval reflects only how the two differ tile by tile."""
    labels = _check(labels)
    diff = np.asarray(correct_a, dtype=float) - np.asarray(correct_b, dtype=float)
    if diff.shape != labels.shape:
        raise ValueError("correct_a and correct_b must have one entry per label")
    draws = [_accuracy(w, diff) for w in resample_weights(labels, bootstrap.resamples, bootstrap.seed)]
    return float(diff.mean()), percentile_interval(np.concatenate(draws), bootstrap.level)


def unpaired_accuracy_difference(
    labels_a: np.ndarray, correct_a: np.ndarray, labels_b: np.ndarray, correct_b: np.ndarray, bootstrap: Bootstrap
) -> tuple[float, Interval]:
    """Accuracy on tiles A minus accuracy on other tiles B (one model on two centres) and its percentile
    interval: each tile set is resampled on its own (stratified), from two independent streams of the one
    seed, so the interval holds both sets' sampling error and no pairing that the tiles do not have."""
    streams = np.random.SeedSequence(bootstrap.seed).spawn(2)
    draws, accuracies = [], []
    for labels, correct, stream in ((labels_a, correct_a, streams[0]), (labels_b, correct_b, streams[1])):
        labels, correct = _check(labels), np.asarray(correct, dtype=float)
        if correct.shape != labels.shape:
            raise ValueError("each correct array must have one entry per label")
        accuracies.append(float(correct.mean()))
        draws.append(np.concatenate([_accuracy(w, correct) for w in resample_weights(labels, bootstrap.resamples, stream)]))
    return accuracies[0] - accuracies[1], percentile_interval(draws[0] - draws[1], bootstrap.level)


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test: only A right (b), only B right (c), and the two-sided p-value."""

    only_a: int
    only_b: int
    p_value: float


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemar:
    """Two-sided exact binomial test of the discordant pairs: under "same accuracy" each discordant tile
    is A's with probability 1/2, so p = min(1, 2 · P[Binomial(b + c, 1/2) <= min(b, c)]); exact integer
    arithmetic, no normal approximation."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    if n == 0:
        return McNemar(0, 0, 1.0)
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return McNemar(only_a, only_b, min(1.0, 2 * tail / 2**n))


# ------------------------------------------------------------------------------------------------
# Across seeds


@dataclass(frozen=True)
class SeedSummary:
    """Mean, sample std and Student-t interval of one metric over n runs (seeds); std and interval
    need n >= 2 and are None below."""

    mean: float
    std: float | None
    n: int
    ci: Interval | None


def seed_summary(values: list[float] | np.ndarray, level: float) -> SeedSummary:
    """mean ± t_{(1+level)/2, n-1} · s / √n: the interval for the mean over seeds of this recipe."""
    from scipy.stats import t

    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("seed_summary needs a non-empty list of values")
    mean, n = float(values.mean()), len(values)
    if n < 2:
        return SeedSummary(mean, None, n, None)
    std = float(values.std(ddof=1))
    half = float(t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return SeedSummary(mean, std, n, (mean - half, mean + half))
