"""Paired comparisons of runs tested on the same tiles: the paired-bootstrap interval of the accuracy
difference, McNemar's exact test and a plain verdict (docs/evidence.md). The report writes them as
comparisons.md/.csv: by default each model against the supervised baseline, or the pairs named with
`sslpath.report --compare A,B`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sslpath.core.errors import UserError
from sslpath.core.files import csv_text
from sslpath.results.stats import (
    LEVEL_RANGE,
    RESAMPLES_RANGE,
    SEED_RANGE,
    Bootstrap,
    Interval,
    SeedSummary,
    mcnemar_exact,
    paired_accuracy_difference,
    seed_summary,
)

BASELINE = "baseline"  # the model kind every other model is compared with by default


class TestedRun(Protocol):
    """What a comparison reads of a run (sslpath.reporting.runs.Run has it): its test labels and predicted classes."""

    dir: Path
    record: Any  # sslpath.results.record.RunRecord
    labels: np.ndarray
    preds: np.ndarray

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def fraction(self) -> float: ...


def describe(run: TestedRun) -> str:
    return f"{run.name} (seed {run.record.seed}, {run.fraction * 100:g}% labels)"


@dataclass(frozen=True)
class Comparison:
    """Model A against model B on the same n tiles: accuracies, A − B with its paired interval, the
    discordant tiles and McNemar's exact p-value, and the verdict at 1 − level."""

    a: str
    b: str
    n: int
    acc_a: float
    acc_b: float
    difference: float
    ci: Interval
    only_a: int
    only_b: int
    p_value: float
    level: float

    @property
    def alpha(self) -> str:
        return f"{(1 - self.level) * 100:g} %"

    @property
    def verdict(self) -> str:
        """Significant only when both the interval excludes 0 and McNemar's p is below 1 − level."""
        excludes_zero = self.ci[0] > 0 or self.ci[1] < 0
        significant = self.p_value < 1 - self.level
        if excludes_zero and significant:
            better = self.a if self.difference > 0 else self.b
            return f"{better} is more accurate (significant at {self.alpha})"
        if not excludes_zero and not significant:
            return f"not significant at {self.alpha}: no difference shown on these tiles"
        return f"inconclusive at {self.alpha}: the paired interval and McNemar's test disagree"


def same_tiles(a: TestedRun, b: TestedRun) -> None:
    """A paired comparison needs both models' predictions on the same tiles in the same order: checked
    as identical label columns (the most test_predictions.csv can tell)."""
    if len(a.labels) == len(b.labels) and bool((a.labels == b.labels).all()):
        return
    if len(a.labels) != len(b.labels):
        problem = f"{len(a.labels)} and {len(b.labels)} test tiles"
    else:
        problem = f"labels that first differ at row {int(np.flatnonzero(a.labels != b.labels)[0])}"
    raise UserError(
        f"{describe(a)} ({a.dir}) and {describe(b)} ({b.dir}) were not tested on the same tiles: their "
        f"test_predictions.csv have {problem}. A paired comparison needs both models' predictions on the same "
        "tiles in the same order. Compare runs tested on one data split (same data, data.path, and seed for "
        "data=synthetic), or test both checkpoints on one data set with sslpath.evaluate and compare those."
    )


def compare_runs(a: TestedRun, b: TestedRun, bootstrap: Bootstrap) -> Comparison:
    """A against B on their common test tiles (UserError when they differ)."""
    same_tiles(a, b)
    correct_a, correct_b = a.preds == a.labels, b.preds == b.labels
    difference, ci = paired_accuracy_difference(a.labels, correct_a, correct_b, bootstrap)
    test = mcnemar_exact(correct_a, correct_b)
    return Comparison(
        a=describe(a),
        b=describe(b),
        n=len(a.labels),
        acc_a=float(correct_a.mean()),
        acc_b=float(correct_b.mean()),
        difference=difference,
        ci=ci,
        only_a=test.only_a,
        only_b=test.only_b,
        p_value=test.p_value,
        level=bootstrap.level,
    )


# ------------------------------------------------------------------------------------------------
# Which pairs


def _match(first: Sequence[TestedRun], second: Sequence[TestedRun]) -> list[tuple[TestedRun, TestedRun]]:
    """Pairs at the same label fraction, each run of `first` with the run of `second` of its seed, or
    with the only run of `second` at that fraction."""
    pairs = []
    for run in first:
        peers = [r for r in second if r.fraction == run.fraction and r is not run]
        seeded = [r for r in peers if r.record.seed == run.record.seed]
        if seeded or len(peers) == 1:
            pairs.append((run, (seeded or peers)[0]))
    return pairs


def default_pairs(runs: Sequence[TestedRun]) -> list[tuple[TestedRun, TestedRun]]:
    """Every model against the supervised baseline tested on the same tiles (same label fraction, same
    seed where there is one); pairs whose test tiles differ are left out."""
    baselines = [r for r in runs if r.kind == BASELINE]
    pairs = _match([r for r in runs if r.kind != BASELINE], baselines)
    return [(a, b) for a, b in pairs if len(a.labels) == len(b.labels) and bool((a.labels == b.labels).all())]


def named_pairs(runs: Sequence[TestedRun], spec: str) -> list[tuple[TestedRun, TestedRun]]:
    """`--compare A,B`: the runs named A against those named B (run_name), matched by label fraction and seed."""
    names = [part.strip() for part in spec.split(",")]
    known = sorted({r.name for r in runs})
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise UserError(f"--compare {spec!r} is not two different run names A,B; the runs here are named {', '.join(known)}.")
    groups = [[r for r in runs if r.name == name] for name in names]
    for name, group in zip(names, groups):
        if not group:
            raise UserError(f"--compare {spec}: no run is named {name!r}; the runs here are named {', '.join(known)}.")
    pairs = _match(*groups)
    if not pairs:
        raise UserError(
            f"--compare {spec}: no run named {names[0]!r} shares a label fraction (and seed, where several runs "
            f"share it) with a run named {names[1]!r}, so nothing can be paired."
        )
    return pairs


# ------------------------------------------------------------------------------------------------
# Tables


def across_seeds(comparisons: Sequence[Comparison], level: float) -> SeedSummary:
    """The differences of several seeds' pairs: mean ± sample std and the t-interval of the mean."""
    return seed_summary([c.difference for c in comparisons], level)


def _pp(value: float) -> str:
    return f"{value * 100:+.1f}"


def comparisons_markdown(comparisons: Sequence[Comparison], bootstrap: Bootstrap, seeds: dict[str, SeedSummary]) -> str:
    """comparisons.md: one row per pair; then, for pairs of models run with several seeds, the mean
    difference over seeds with its t-interval."""
    level = f"{bootstrap.level * 100:g} %"
    lines = [
        "# Paired comparisons\n",
        f"Accuracy of A minus accuracy of B on the same test tiles, in percentage points, with its paired "
        f"percentile-bootstrap {level} interval ({bootstrap.resamples:,} resamples stratified by class, seed "
        f"{bootstrap.seed}), and McNemar's exact test on the tiles only one model gets right. A difference is called "
        "significant only when the interval excludes 0 and p is below the level.\n",
        "| A | B | tiles | acc A (%) | acc B (%) | A − B (pp) | interval (pp) | only A right | only B right | McNemar p "
        "| verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in comparisons:
        cells = [
            c.a.replace("|", "\\|"),
            c.b.replace("|", "\\|"),
            str(c.n),
            f"{c.acc_a * 100:.1f}",
            f"{c.acc_b * 100:.1f}",
            _pp(c.difference),
            f"[{_pp(c.ci[0])}, {_pp(c.ci[1])}]",
            str(c.only_a),
            str(c.only_b),
            f"{c.p_value:.3g}",
            c.verdict.replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if seeds:
        lines += [
            "",
            f"## Over seeds\n\nMean of the per-seed differences ± sample std, n pairs, and the Student-t {level} "
            "interval of the mean: whether the recipe, not one seed, makes the difference.\n",
            "| A vs B | n | mean A − B (pp) | std (pp) | t-interval (pp) |\n|---|---:|---:|---:|---:|",
        ]
        for pair, s in seeds.items():
            ci = "—" if s.ci is None else f"[{_pp(s.ci[0])}, {_pp(s.ci[1])}]"
            std = "—" if s.std is None else f"{s.std * 100:.1f}"
            lines.append(f"| {pair.replace('|', chr(92) + '|')} | {s.n} | {_pp(s.mean)} | {std} | {ci} |")
    return "\n".join(lines) + "\n"


def comparisons_csv(comparisons: Sequence[Comparison], bootstrap: Bootstrap) -> str:
    """The same numbers unformatted (fractions, not percentage points)."""
    header = [
        "a",
        "b",
        "tiles",
        "acc_a",
        "acc_b",
        "difference",
        "ci_lo",
        "ci_hi",
        "only_a",
        "only_b",
        "mcnemar_p",
        "level",
        "resamples",
        "seed",
        "verdict",
    ]
    rows = [
        [
            c.a,
            c.b,
            c.n,
            c.acc_a,
            c.acc_b,
            c.difference,
            *c.ci,
            c.only_a,
            c.only_b,
            c.p_value,
            c.level,
            bootstrap.resamples,
            bootstrap.seed,
            c.verdict,
        ]
        for c in comparisons
    ]
    return csv_text([header, *rows])


@dataclass(frozen=True)
class PairedComparisons:
    """A report's comparisons, the over-seeds summaries and the bootstrap that made them."""

    rows: list[Comparison]
    seeds: dict[str, SeedSummary]
    bootstrap: Bootstrap

    def markdown(self) -> str:
        return comparisons_markdown(self.rows, self.bootstrap, self.seeds)

    def csv(self) -> str:
        return comparisons_csv(self.rows, self.bootstrap)


def paired_comparisons(runs: Sequence[TestedRun], specs: Sequence[str], bootstrap: Bootstrap) -> PairedComparisons:
    """The report's comparisons: the pairs `specs` name (`A,B` each), or by default every model against
    the baseline; with the over-seeds summary of every A-vs-B with more than one pair and no run in two
    pairs (independent seeds on both sides)."""
    pairs = [p for spec in specs for p in named_pairs(runs, spec)] if specs else default_pairs(runs)
    comparisons = [compare_runs(a, b, bootstrap) for a, b in pairs]
    by_models: dict[str, list[tuple[TestedRun, TestedRun, Comparison]]] = {}
    for (a, b), c in zip(pairs, comparisons):
        by_models.setdefault(f"{a.name} vs {b.name}, {a.fraction * 100:g}% labels", []).append((a, b, c))
    seeds = {
        key: across_seeds([c for _, _, c in rows], bootstrap.level)
        for key, rows in by_models.items()
        if len(rows) > 1 and all(len({id(row[i]) for row in rows}) == len(rows) for i in (0, 1))  # no run in two pairs
    }
    return PairedComparisons(comparisons, seeds, bootstrap)


def checked_bootstrap(resamples: int, seed: int, level: float) -> Bootstrap:
    """The report's --bootstrap-resamples, --bootstrap-seed and --ci-level, in the ranges training allows
    for eval.bootstrap_resamples, eval.bootstrap_seed and eval.ci_level."""
    for flag, key, value, (lo, hi) in (
        ("--bootstrap-resamples", "eval.bootstrap_resamples", resamples, RESAMPLES_RANGE),
        ("--bootstrap-seed", "eval.bootstrap_seed", seed, SEED_RANGE),
        ("--ci-level", "eval.ci_level", level, LEVEL_RANGE),
    ):
        if not lo <= value <= hi:
            raise UserError(f"{flag} {value} is not valid: it must be from {lo:g} to {hi:g} (as {key} in training).")
    return Bootstrap(resamples=resamples, seed=seed, level=level)
