"""The uncertainty a report shows beside each estimate (docs/evidence.md): over several seeds the mean ± sample
std with a Student-t interval (sslpath.results.stats.seed_summary); for a single run the percentile-bootstrap
interval its metrics.json stores, or, for an accuracy stored without one (the frozen-feature kNN and linear
probe, whose per-tile predictions are not kept), the Wilson score interval over the test tiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import binomtest

from sslpath.results.stats import Interval, seed_summary

T = "t"  # Student-t interval of the mean over seeds
BOOTSTRAP = "bootstrap"  # the run's own stratified percentile bootstrap (metrics.json `<key>_ci`)
WILSON = "wilson"  # Wilson score interval of a proportion of test tiles
METHOD_TEXT = {
    T: "Student-t interval of the mean over seeds",
    BOOTSTRAP: "percentile-bootstrap interval of the test tiles (stored in metrics.json)",
    WILSON: "Wilson score interval over the test tiles",
}


@dataclass(frozen=True)
class Estimate:
    """One metric of one table row: mean over n runs, sample std (n >= 2) and an interval with its method."""

    mean: float
    std: float | None
    n: int
    ci: Interval | None
    method: str | None


def wilson_interval(rate: float, tiles: int, level: float) -> Interval:
    """Wilson score interval of an accuracy measured on `tiles` test tiles (scipy's binomtest)."""
    ci = binomtest(round(rate * tiles), tiles).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def difference_interval(rate_a: float, tiles_a: int, rate_b: float, tiles_b: int, level: float) -> Interval:
    """Interval of rate_a − rate_b for two accuracies whose per-tile results are not kept (a robustness
    benchmark's rows): Newcombe's hybrid score interval (1998, method 10) from the two Wilson intervals. It
    treats the two as independent samples; for two conditions of the same tiles it is conservative (wider)."""
    (low_a, high_a), (low_b, high_b) = wilson_interval(rate_a, tiles_a, level), wilson_interval(rate_b, tiles_b, level)
    difference = rate_a - rate_b
    return (
        difference - math.hypot(rate_a - low_a, high_b - rate_b),
        difference + math.hypot(high_a - rate_a, rate_b - low_b),
    )


def estimate(values: Sequence[float], level: float, *, stored_ci: Interval | None = None, tiles: int | None = None) -> Estimate:
    """The row's estimate: a t-interval over n >= 2 seeds; for one run its stored bootstrap interval, else
    a Wilson interval when the value is an accuracy on `tiles` test tiles, else none."""
    summary = seed_summary(list(values), level)
    if summary.n >= 2:
        return Estimate(summary.mean, summary.std, summary.n, summary.ci, T)
    if stored_ci is not None:
        return Estimate(summary.mean, None, 1, (float(stored_ci[0]), float(stored_ci[1])), BOOTSTRAP)
    if tiles:
        return Estimate(summary.mean, None, 1, wilson_interval(summary.mean, tiles, level), WILSON)
    return Estimate(summary.mean, None, 1, None, None)
