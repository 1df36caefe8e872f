"""Figures of a report's evidence: SSL backbones' online probe beside their frozen-feature kNN and linear
probe (each with the table's interval), and a reliability diagram per row from the bins its ECE used."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from sslpath.reporting.figures import error_bars, new_figure
from sslpath.reporting.style import FALLBACK_COLOURS
from sslpath.reporting.tables import COLUMNS, LEVEL, Group
from sslpath.results.calibration import reliability, reliability_figure

FROZEN_COLUMNS = (COLUMNS[0], COLUMNS[3], COLUMNS[4])  # online probe's test accuracy, frozen kNN, frozen linear
FROZEN_LABELS = ("online linear probe", "frozen kNN", "frozen linear probe")
FROZEN_FIGURE = "frozen_features"  # figure stem, in the report dir
MAX_ECE_BINS = 1000  # more bins than any test split fills: an edited metrics.json, drawn no diagram


def frozen_features_figure(groups: Sequence[Group], level: float = LEVEL) -> Figure | None:
    """Per SSL row: the online probe's test accuracy beside the frozen-feature kNN and linear probe, each with
    the table's interval. None when no run has frozen-feature results."""
    rows = [g for g in groups if any(g.values(c.key) for c in FROZEN_COLUMNS[1:])]
    if not rows:
        return None
    with_fraction = len({g.fraction for g in rows}) > 1
    fig = new_figure((max(6.4, 1.1 * len(rows) + 2), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / len(FROZEN_COLUMNS)
    for i, (column, label) in enumerate(zip(FROZEN_COLUMNS, FROZEN_LABELS)):
        found = [column.estimate(g, level) for g in rows]
        xs = np.arange(len(rows)) + (i - 1) * width
        means = [100 * e.mean if e else np.nan for e in found]
        ax.bar(xs, means, width, yerr=error_bars(found), capsize=3, label=label, color=FALLBACK_COLOURS[i + 2])
    classes = len(rows[0].class_names)
    ax.axhline(100 / classes, color="0.4", linestyle=(0, (1, 2)), linewidth=1.2, label=f"chance (1/{classes})")
    ax.set_xticks(np.arange(len(rows)), [g.label(with_fraction) + f" (n={len(g.runs)})" for g in rows], rotation=20, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"SSL backbones: online probe vs frozen features, {level * 100:g} % intervals", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return fig


def reliability_of(group: Group) -> Figure | None:
    """The group's reliability diagram, its runs' test tiles pooled, in the bins metrics.json's ECE used
    (`ece_bins`); None for runs without them (or with differing or implausibly many bins)."""
    bins = {run.record.ece_bins for run in group.runs}
    count = bins.pop() if len(bins) == 1 else None
    if count is None or not 1 <= count <= MAX_ECE_BINS:
        return None
    labels = np.concatenate([run.labels for run in group.runs])
    curve = reliability(labels, np.concatenate([run.probs for run in group.runs]), count)
    return reliability_figure({group.name: curve}, f"Reliability · {group.title}")
