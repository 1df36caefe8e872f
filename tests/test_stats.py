"""Bootstrap intervals, paired comparisons, McNemar's exact test and seed intervals (sslpath.results.stats)."""

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm

from sslpath.results import stats
from sslpath.results.metrics import classification_results
from sslpath.results.stats import Bootstrap

COVERAGE_DRAWS = 400  # coverage of a 95 % interval over 400 draws has a standard error of about 0.011


def onehot_probs(preds: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes)[preds] * 0.7 + 0.3 / classes


def test_accuracy_and_balanced_accuracy_intervals_cover_the_truth_95_percent_of_the_time():
    """Three classes of unequal size and accuracy: each tile is right with its class's probability, so the
    true accuracy is the count-weighted and the true balanced accuracy the plain mean of those."""
    sizes, rates = np.array([20, 35, 50]), np.array([0.6, 0.8, 0.9])
    labels = np.repeat(np.arange(3), sizes)
    truth_acc, truth_balanced = float((sizes * rates).sum() / sizes.sum()), float(rates.mean())
    rng = np.random.default_rng(0)
    hits = np.zeros(2)
    for draw in range(COVERAGE_DRAWS):
        correct = rng.random(len(labels)) < rates[labels]
        probs = onehot_probs(np.where(correct, labels, (labels + 1) % 3), 3)
        ci = stats.bootstrap_intervals(labels, probs, Bootstrap(seed=draw))
        hits += [ci["acc"][0] <= truth_acc <= ci["acc"][1], ci["balanced_acc"][0] <= truth_balanced <= ci["balanced_acc"][1]]
    coverage = hits / COVERAGE_DRAWS
    assert ((0.92 <= coverage) & (coverage <= 0.98)).all(), coverage


@pytest.mark.slow
def test_auc_interval_covers_the_truth_95_percent_of_the_time():
    """Two Gaussian classes one standard deviation × d apart: the true AUC is Φ(d/√2)."""
    d, n = 1.2, 60
    truth = float(norm.cdf(d / np.sqrt(2)))
    labels = np.repeat([0, 1], n)
    rng = np.random.default_rng(1)
    hits = 0
    for draw in range(COVERAGE_DRAWS):
        score = np.r_[rng.normal(0, 1, n), rng.normal(d, 1, n)]
        p1 = 1 / (1 + np.exp(-score))
        lo, hi = stats.bootstrap_intervals(labels, np.c_[1 - p1, p1], Bootstrap(seed=draw))["auc"]
        hits += lo <= truth <= hi
    assert 0.92 <= hits / COVERAGE_DRAWS <= 0.98, hits / COVERAGE_DRAWS


def test_interval_contains_the_point_estimate_and_is_seeded():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 150)
    probs = rng.dirichlet(np.ones(4), 150)
    probs[np.arange(150), labels] += 0.3
    first = stats.bootstrap_intervals(labels, probs, Bootstrap(resamples=1000, seed=7))
    assert first == stats.bootstrap_intervals(labels, probs, Bootstrap(resamples=1000, seed=7))
    assert first != stats.bootstrap_intervals(labels, probs, Bootstrap(resamples=1000, seed=8))
    points = {
        "acc": stats.accuracy(labels, probs.argmax(1)),
        "balanced_acc": stats.balanced_accuracy(labels, probs.argmax(1)),
        "auc": stats.macro_auc(labels, probs),
    }
    for key, (lo, hi) in first.items():
        assert lo < points[key] < hi, key
    wider = stats.bootstrap_intervals(labels, probs, Bootstrap(seed=7, level=0.99))
    assert all(wider[k][0] <= first[k][0] and first[k][1] <= wider[k][1] for k in first)


def test_resampling_is_stratified_by_class():
    """Every resample keeps each class's tile count and draws only that class's tiles."""
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    for weights in stats.resample_weights(labels, 500, seed=0):
        for c in range(3):
            assert (weights[labels == c].sum(axis=0) == (labels == c).sum()).all()
        assert (weights >= 0).all() and weights.shape == (10, 500)


def test_point_metrics_agree_with_sklearn_torchmetrics_and_a_hand_case():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    # Hand case: class 0 has 4 tiles, 3 right; class 1 has 1 tile, right -> accuracy 4/5, balanced (3/4 + 1)/2.
    labels, preds = np.array([0, 0, 0, 0, 1]), np.array([0, 0, 0, 1, 1])
    assert stats.accuracy(labels, preds) == pytest.approx(0.8)
    assert stats.balanced_accuracy(labels, preds) == pytest.approx(0.875)
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 300)
    labels[labels == 4] = 3  # class 4 absent: averaged over the present classes only
    logits = rng.normal(size=(300, 5))
    logits[np.arange(300), labels] += 1.0
    probs = torch.tensor(logits).softmax(1).numpy().astype(float)
    assert stats.balanced_accuracy(labels, probs.argmax(1)) == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)))
    expected = classification_results(torch.tensor(logits), torch.tensor(labels), list("abcde"))["test_auc"]
    assert stats.macro_auc(labels, probs) == pytest.approx(expected, abs=1e-6)  # metrics.json's (torchmetrics, float32)
    tied = np.round(probs, 1)  # many ties, each counting one half
    one_vs_rest = [roc_auc_score(labels == c, tied[:, c]) for c in range(4)]
    assert stats.macro_auc(labels, tied) == pytest.approx(np.mean(one_vs_rest))
    assert stats.macro_auc(np.zeros(5, dtype=int), np.full((5, 2), 0.5)) is None  # one class: no AUC
    assert stats.bootstrap_intervals(np.zeros(5, dtype=int), np.full((5, 2), 0.5), Bootstrap())["auc"] is None


def test_paired_bootstrap_matches_the_hand_computed_distribution():
    """One class, two tiles: A right on both, B right on the second only. A resample draws the first tile
    twice (p 1/4, difference 1), once (p 1/2, difference 1/2) or never (p 1/4, difference 0)."""
    labels, a, b = np.zeros(2, dtype=int), np.array([1, 1]), np.array([0, 1])
    diff, (lo, hi) = stats.paired_accuracy_difference(labels, a, b, Bootstrap(resamples=20_000, seed=0))
    assert diff == 0.5 and (lo, hi) == (0.0, 1.0)
    draws = np.concatenate([(w[0] * 1.0) / 2 for w in stats.resample_weights(labels, 20_000, 0)])
    assert [np.mean(draws == v) for v in (0.0, 0.5, 1.0)] == pytest.approx([0.25, 0.5, 0.25], abs=0.015)
    # Two classes of one tile each: stratified resampling keeps both tiles, so the difference never varies.
    assert stats.paired_accuracy_difference(np.array([0, 1]), a, b, Bootstrap(seed=0)) == (0.5, (0.5, 0.5))
    # Identical models: difference 0 in every resample.
    assert stats.paired_accuracy_difference(np.arange(6) % 2, a.repeat(3), a.repeat(3), Bootstrap()) == (0.0, (0.0, 0.0))


def test_paired_interval_is_narrower_than_the_difference_of_unpaired_intervals():
    """Two models right on mostly the same tiles: pairing removes the shared tile-to-tile variation."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 200)
    easy = rng.random(200) < 0.8
    a, b = easy | (rng.random(200) < 0.3), easy.copy()
    _, (lo, hi) = stats.paired_accuracy_difference(labels, a, b, Bootstrap())
    widths = []
    for correct in (a, b):
        probs = onehot_probs(np.where(correct, labels, (labels + 1) % 3), 3)
        ci_lo, ci_hi = stats.bootstrap_intervals(labels, probs, Bootstrap())["acc"]
        widths.append(ci_hi - ci_lo)
    unpaired = np.hypot(*widths)  # the width for a difference of two independent estimates
    assert hi - lo < 0.75 * unpaired


def test_mcnemar_exact_agrees_with_hand_cases_and_scipy():
    # 8 tiles only A gets right, 2 only B: p = 2 · (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 112/1024.
    a = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0] * 3, dtype=bool)
    b = np.array([0] * 8 + [1] * 2 + [1] * 5 + [0] * 3, dtype=bool)
    result = stats.mcnemar_exact(a, b)
    assert (result.only_a, result.only_b) == (8, 2) and result.p_value == pytest.approx(112 / 1024)
    assert stats.mcnemar_exact(np.ones(10, bool), np.zeros(10, bool)).p_value == pytest.approx(2 / 1024)
    assert stats.mcnemar_exact(a, a).p_value == 1.0  # no discordant tile
    assert stats.mcnemar_exact([1, 0, 1, 0], [0, 1, 0, 1]).p_value == 1.0  # 2 vs 2: capped at 1
    rng = np.random.default_rng(5)
    for _ in range(20):
        a, b = rng.random(300) < 0.7, rng.random(300) < 0.75
        result = stats.mcnemar_exact(a, b)
        reference = binomtest(result.only_a, result.only_a + result.only_b, 0.5).pvalue
        assert result.p_value == pytest.approx(reference, rel=1e-9)


def test_seed_summary_gives_mean_sample_std_and_student_t_interval():
    summary = stats.seed_summary([1.0, 2.0, 3.0, 4.0, 5.0], level=0.95)
    # t(0.975, df=4) = 2.7764 (any t table); s = sqrt(2.5); half-width = 2.7764 · s / sqrt(5) = 1.9632.
    assert (summary.mean, summary.n) == (3.0, 5) and summary.std == pytest.approx(np.sqrt(2.5))
    assert summary.ci == pytest.approx((3 - 1.9632, 3 + 1.9632), abs=1e-4)
    # t(0.95, df=1) = 6.3138 and s / sqrt(2) = 0.0283 / 1.414 = 0.02: two seeds give a wide 90 % interval.
    two = stats.seed_summary([0.80, 0.84], level=0.90)
    assert two.ci == pytest.approx((0.82 - 6.3138 * 0.02, 0.82 + 6.3138 * 0.02), abs=1e-4)
    one = stats.seed_summary([0.8], level=0.95)
    assert (one.mean, one.std, one.n, one.ci) == (0.8, None, 1, None)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="resamples"):
        Bootstrap(resamples=0)
    with pytest.raises(ValueError, match="level"):
        Bootstrap(level=1.0)
    with pytest.raises(ValueError, match="labels"):
        stats.bootstrap_intervals(np.array([], dtype=int), np.zeros((0, 2)), Bootstrap())
