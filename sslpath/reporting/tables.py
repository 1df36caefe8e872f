"""Runs pooled into groups (one run name and label fraction, any seeds) and the tables built from them:
results.md/.csv and sweep_results.md/.csv share one builder, with different columns."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sslpath.core.errors import UserError
from sslpath.core.files import csv_text
from sslpath.core.names import path_name
from sslpath.reporting.runs import Run
from sslpath.reporting.style import percent
from sslpath.results.intervals import METHOD_TEXT, Estimate, estimate
from sslpath.results.sources import OWN_SOURCE, DataSource
from sslpath.results.stats import Bootstrap

SELECTION_TEXT = {  # the record's `selection` (sslpath.training.protocol) -> how the tested checkpoint was chosen
    "best_val": "the best validation accuracy on the whole validation split",
    "val_subset": "the best validation accuracy on a share of the validation split the size of its label fraction",
    "last": "the last epoch, without validation labels",
}


@dataclass
class Group:
    """Runs pooled into one table row and one confusion matrix: one run name and label fraction, any seeds."""

    name: str
    fraction: float
    runs: list[Run]
    source: DataSource = OWN_SOURCE  # where the runs' test tiles came from (sslpath.results.sources)

    @property
    def kind(self) -> str:
        return self.runs[0].kind

    @property
    def colour_key(self) -> str:
        return self.runs[0].colour_key

    @property
    def class_names(self) -> list[str]:
        return self.runs[0].class_names

    @property
    def title(self) -> str:
        seeds = sorted({run.record.seed for run in self.runs})
        pooled = f"seed {seeds[0]}" if len(self.runs) == 1 else f"seeds {', '.join(map(str, seeds))} (pooled)"
        return f"{self.shown_name} · {percent(self.fraction)} labels · {pooled}"

    @property
    def shown_name(self) -> str:
        """The run name, and the data its runs were tested on unless that is their own test split."""
        return self.name if self.source.own else f"{self.name} · {self.source.label}"

    def label(self, with_fraction: bool) -> str:
        return f"{self.shown_name}, {percent(self.fraction)} labels" if with_fraction else self.shown_name

    def values(self, key: str) -> list[float]:
        """The runs' values of a record field; runs without it (null) are left out."""
        return [value for run in self.runs if (value := getattr(run.record, key)) is not None]


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """One group per (run name, label fraction, data source): names in first-seen order, fractions ascending
    within a name, sources (a training run's own test split, or each data set an evaluation named) in
    first-seen order within a fraction, so one checkpoint evaluated on two centres gives two rows.

    A group's runs are its seeds, so n is the number of distinct seeds: a seed that appears twice (a copied
    run dir, a rerun with the same seed, or runs that differ in something other than the seed under one run
    name) is refused rather than counted twice, which would inflate n and shrink the ±. A run dir named
    twice is one run already (find_run_dirs)."""
    by_key: dict[tuple[str, float, str], list[Run]] = {}
    sources: dict[str, DataSource] = {}
    for run in runs:
        source = sources.setdefault(run.source.key, run.source)
        by_key.setdefault((run.name, run.fraction, source.key), []).append(run)
    order = {key: i for i, key in enumerate(by_key)}
    names = dict.fromkeys(name for name, _, _ in by_key)
    rank = {name: i for i, name in enumerate(names)}
    keys = sorted(by_key, key=lambda k: (rank[k[0]], k[1], order[k]))
    groups = [Group(name, f, by_key[name, f, key], sources[key]) for name, f, key in keys]
    for group in groups:
        for what, attribute in (("classes", "class_names"), ("model kinds", "kind")):
            if any(getattr(run, attribute) != getattr(group.runs[0], attribute) for run in group.runs):
                raise UserError(
                    f"runs named {group.name!r} with {percent(group.fraction)} labels have different {what} "
                    f"({', '.join(str(run.dir) for run in group.runs)}), so they cannot be pooled as seeds of one "
                    "model. Give runs of different models or data different run_name values."
                )
        first_of_seed: dict[int, Run] = {}
        for run in group.runs:
            twin = first_of_seed.setdefault(run.record.seed, run)
            if twin is not run:
                raise UserError(
                    f"{twin.dir} and {run.dir} are both seed {run.record.seed} of {group.name!r} with "
                    f"{percent(group.fraction)} labels: the same seed twice is not two replicates (a copy of a run, "
                    "or a rerun with the same seed, would inflate n and shrink the ±). Report one of them, or "
                    "give runs that differ in more than the seed different run_name values."
                )
    return groups


def selection_sentence(groups: Sequence[Group]) -> str:
    """How the runs chose the checkpoint they were tested with (a record without `selection`: best_val)."""
    chosen = sorted({run.record.selection or "best_val" for group in groups for run in group.runs})
    mixed = " (runs differ; each metrics.json names its `selection`)" if len(chosen) > 1 else ""
    return f"Test metrics of each run's checkpoint chosen by {' / '.join(SELECTION_TEXT[s] for s in chosen)}{mixed}."


def uncertainty_sentence(level: float) -> str:
    """How to read a cell's interval (sslpath.results.intervals)."""
    return (
        f"Brackets: {level * 100:g} % intervals — over n >= 2 seeds the {METHOD_TEXT['t']}; for a single run the "
        f"{METHOD_TEXT['bootstrap']}, or for the frozen-feature accuracies the {METHOD_TEXT['wilson']}."
    )


def frozen_sentence(groups: Sequence[Group]) -> str:
    """What the frozen-feature columns are, when the table has them (SSL runs of a recent sslpath)."""
    if not any(g.values("frozen_knn_acc") or g.values("frozen_linear_acc") for g in groups):
        return ""
    return (
        " An SSL run's test accuracy, AUC and balanced accuracy are its online linear probe's (trained beside the "
        "backbone on detached features); the frozen kNN and frozen linear-probe columns evaluate its exported "
        "backbone's frozen features after training (clean images, eval mode; a weighted kNN and a logistic "
        "regression fitted to convergence on the labelled training images, L2 chosen on validation)."
    )


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Column:
    """A table column: a run record field shown as mean ± std, times scale, with `digits` decimals.

    An estimate (`interval`) also shows its interval (sslpath.results.intervals): over n >= 2 seeds the
    t-interval; for one run the bootstrap interval stored as `<key>_ci` (ci="stored") or the Wilson interval
    over the test tiles (ci="tiles"). Epochs and wall time are no estimates. An `optional` column is left
    out of a table none of whose runs has its key."""

    header: str
    key: str
    scale: float = 1.0
    digits: int = 4
    interval: bool = True
    ci: str | None = None  # None | "stored" | "tiles": where a single run's interval comes from
    optional: bool = False

    def estimate(self, group: Group, level: float) -> Estimate | None:
        values = group.values(self.key)
        if not values:
            return None
        run = next(run for run in group.runs if getattr(run.record, self.key) is not None)
        stored = getattr(run.record, f"{self.key}_ci") if self.ci == "stored" else None
        tiles = len(run.labels) if self.ci == "tiles" else None
        return estimate(values, level, stored_ci=stored, tiles=tiles)

    def cell(self, group: Group, level: float) -> str:
        values = group.values(self.key)
        if not values:
            return "—"
        mean, std = mean_std(values)
        text = f"{mean * self.scale:.{self.digits}f}"
        if len(values) > 1:
            text += f" ± {std * self.scale:.{self.digits}f}"
        found = self.estimate(group, level) if self.interval else None
        if found is not None and found.ci is not None:
            low, high = (bound * self.scale for bound in found.ci)
            text += f" [{low:.{self.digits}f}, {high:.{self.digits}f}]"
        return text + (f" (n={len(values)})" if len(values) < len(group.runs) else "")


COLUMNS = (
    Column("Test accuracy (%)", "test_acc", 100.0, 2, ci="stored"),
    Column("Balanced accuracy (%)", "test_balanced_acc", 100.0, 2, ci="stored", optional=True),
    Column("Test AUC", "test_auc", ci="stored"),
    Column("Frozen kNN accuracy (%)", "frozen_knn_acc", 100.0, 2, ci="tiles", optional=True),
    Column("Frozen linear-probe accuracy (%)", "frozen_linear_acc", 100.0, 2, ci="tiles", optional=True),
    Column("Val kNN accuracy (%)", "val_knn_acc", 100.0, 2),
    Column("Test ECE", "test_ece", optional=True),
    Column("Test loss", "test_loss"),
    Column("Epochs", "epochs", digits=0, interval=False),
    Column("Wall time (min)", "wall_seconds", 1 / 60, 1, interval=False),
)
SWEEP_COLUMNS = tuple(COLUMNS[i] for i in (0, 2, 3, 4))
LEVEL = Bootstrap().level  # t and Wilson intervals of tables written without the report's settings (sweeps)


def shown_columns(groups: Sequence[Group], columns: Sequence[Column]) -> list[Column]:
    """The columns a table shows: optional ones only where some run has the key (old runs, supervised-only)."""
    return [c for c in columns if not c.optional or any(g.values(c.key) for g in groups)]


def markdown_table(groups: Sequence[Group], columns: Sequence[Column], level: float = LEVEL) -> str:
    columns = shown_columns(groups, columns)
    header = ["Model", "Label fraction", "n", *(column.header for column in columns)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for group in groups:
        cells = [group.shown_name.replace("|", "\\|"), f"{group.fraction:g}", str(len(group.runs))]
        lines.append("| " + " | ".join(cells + [column.cell(group, level) for column in columns]) + " |")
    return "\n".join(lines) + "\n"


def csv_table(groups: Sequence[Group], columns: Sequence[Column], level: float = LEVEL) -> str:
    """The table's numbers unformatted: mean and std per metric (std empty below two values, both without any),
    and for estimates the interval's bounds and method (t, bootstrap, wilson; empty without one)."""
    columns = shown_columns(groups, columns)
    stats = [
        f"{column.key}_{stat}"
        for column in columns
        for stat in ("mean", "std", *(("ci_low", "ci_high", "ci_method") if column.interval else ()))
    ]
    rows: list[list[Any]] = [["model", "kind", "label_fraction", "n", *stats]]
    for group in groups:
        row: list[Any] = [group.name, group.kind, group.fraction, len(group.runs)]
        for column in columns:
            values = group.values(column.key)
            mean, std = mean_std(values) if values else ("", "")
            row += [mean, std if len(values) > 1 else ""]
            if column.interval:
                found = column.estimate(group, level)
                ci = found.ci if found is not None and found.ci is not None else None
                row += [*(ci or ("", "")), found.method if ci else ""]
        rows.append(row)
    return csv_text(rows)


def slug(name: str) -> str:
    """A figure's file stem for a run name: letters, digits, . _ - only (markdown links stay plain), and short."""
    return path_name(re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model")


def group_stems(groups: Sequence[Group]) -> list[str]:
    """A unique file stem per group: its name, plus the label fraction when the name has several."""
    fractions = Counter(group.name for group in groups)
    stems: list[str] = []
    for group in groups:
        stem = slug(group.name) + (f"_{group.fraction * 100:g}pct" if fractions[group.name] > 1 else "")
        stems.append(stem if stem not in stems else f"{stem}_{len(stems)}")
    return stems
