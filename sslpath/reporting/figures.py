"""Figures of reports, drawn on matplotlib's Agg canvas without pyplot (no GUI, no global backend state):
the helpers every report uses (a canvas, saving in several formats, markdown that shows a figure) and the
run and sweep figures (validation curves, label efficiency, example grids, confusion matrices)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from torch.utils.tensorboard import SummaryWriter

from sslpath.core.files import atomic_write_bytes
from sslpath.models import registry
from sslpath.reporting.runs import GRID, VAL_TAGS, Run
from sslpath.reporting.style import class_legend, line_styles, percent, short_class_names
from sslpath.reporting.tables import COLUMNS, LEVEL, Group, mean_std
from sslpath.results.intervals import Estimate

ACC_TAG, LOSS_TAG = VAL_TAGS
# figure stem -> (TensorBoard tag, y label, scale)
VAL_PLOTS = {
    "val_accuracy": (ACC_TAG, "validation accuracy (%)", 100.0),
    "val_loss": (LOSS_TAG, "validation loss", 1.0),
}


# ----------------------------------------------------------------------------------------------
# What every report's figures share


def new_figure(size: tuple[float, float], legend: str = "") -> Figure:
    """A figure on its own Agg canvas, with `legend` (e.g. class_legend's) in small print below."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    if legend:
        fig.supxlabel(legend, fontsize=7, color="0.25")
    return fig


@contextlib.contextmanager
def literal_text(fig: Figure) -> Iterator[None]:
    """Draw every text of fig as written: run and class names are data, and `$…$` in one must not be parsed
    as math (matplotlib would fail on `$\\foo$`). Covers texts made so far and tick labels made while drawing."""
    with matplotlib.rc_context({"text.parse_math": False}):
        for text in fig.findobj(Text):
            text.set_parse_math(False)
        yield


def save_figure(fig: Figure, stem: Path, formats: Sequence[str], dpi: int) -> None:
    """stem.<format> for each format, each written atomically."""
    for fmt in formats:
        buf = io.BytesIO()
        with literal_text(fig):
            fig.savefig(buf, format=fmt, dpi=dpi)
        atomic_write_bytes(stem.with_name(f"{stem.name}.{fmt}"), buf.getvalue())


def embed(stem: str, formats: Sequence[str]) -> str:
    """Markdown showing a figure: PNG or SVG inline, else a link to the PDF."""
    shown = next((fmt for fmt in ("png", "svg") if fmt in formats), None)
    name = Path(stem).name
    return f"![{name}]({stem}.{shown})" if shown else f"[{name} (PDF)]({stem}.pdf)"


def error_bars(found: Sequence[Estimate | None]) -> np.ndarray:
    """matplotlib's 2×N yerr, in %, from estimates' intervals: 0 where there is no estimate or interval.

    A bound on the wrong side of its mean draws no bar on that side (matplotlib refuses negative lengths): a
    float32 test_acc beside the float64 bounds of a zero-width bootstrap interval, or a percentile interval
    that misses its estimate; the table and CSV keep the bounds as they are."""
    bars = [[100 * (e.mean - e.ci[0]), 100 * (e.ci[1] - e.mean)] if e and e.ci else [0.0, 0.0] for e in found]
    return np.maximum(np.array(bars), 0.0).T


# ----------------------------------------------------------------------------------------------
# Run and sweep figures


def curves_figure(groups: Sequence[Group], tag: str, ylabel: str, scale: float) -> Figure:
    """One line per group (mean over its runs, ±std band when there are several).

    An SSL model's val/acc is its online linear probe's (a linear head on detached features), not a
    fine-tuned network's, and its legend says so.
    """
    fig = new_figure((6.4, 4.0))
    ax = fig.add_subplot()
    with_fraction = len({group.fraction for group in groups}) > 1
    last_epoch = 1
    for group, style in zip(groups, line_styles([group.colour_key for group in groups])):
        by_epoch: dict[int, list[float]] = {}
        for run in group.runs:
            for epoch, value in run.curves.get(tag, {}).items():
                by_epoch.setdefault(epoch, []).append(value * scale)
        if not by_epoch:
            continue
        epochs = sorted(by_epoch)
        last_epoch = max(last_epoch, epochs[-1])
        mean, std = np.array([mean_std(by_epoch[e]) for e in epochs]).T
        label = group.label(with_fraction) + (f" (n={len(group.runs)})" if len(group.runs) > 1 else "")
        if tag == ACC_TAG and registry.is_ssl(group.kind):
            label += " — online linear probe"
        ax.plot(epochs, mean, markersize=4, label=label, **style)
        if len(group.runs) > 1:
            ax.fill_between(epochs, mean - std, mean + std, color=style["color"], alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.5, last_epoch + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no {tag} in the runs' TensorBoard logs", ha="center", transform=ax.transAxes)
    return fig


def label_efficiency_figure(groups: Sequence[Group], level: float = LEVEL) -> Figure | None:
    """Test accuracy against labels per class (log x): one line per model name run at several label
    fractions, error bars = the table's interval (t over n >= 2 seeds, the stored bootstrap interval for one
    run; sslpath.results.intervals), a dotted chance line at 1 / number of classes. None when no
    model was run at several fractions.

    x is metrics.json's `train_labels_per_class` (labelled training images per class: label fraction ×
    training-set size / classes) when every plotted run has it. Evaluations (sslpath.evaluate) do not record
    it; with one among them x is the label fraction and the axis is labelled "label fraction".
    """
    lines = {name: [g for g in groups if g.shown_name == name] for name in dict.fromkeys(g.shown_name for g in groups)}
    lines = {name: line for name, line in lines.items() if len(line) > 1}
    if not lines:
        return None
    per_class = all(run.record.train_labels_per_class for line in lines.values() for g in line for run in g.runs)

    def x(group: Group) -> float:
        return float(np.mean(group.values("train_labels_per_class"))) if per_class else group.fraction

    fig = new_figure((6.4, 4.0))
    ax = fig.add_subplot()
    for (name, line), style in zip(lines.items(), line_styles([line[0].colour_key for line in lines.values()])):
        found = [COLUMNS[0].estimate(g, level) for g in line]
        mean = np.array([100 * e.mean for e in found])
        seeds = sorted({len(g.runs) for g in line})
        label = name + f" (n={'/'.join(map(str, seeds))})"
        yerr = error_bars(found) if any(e.ci for e in found) else None
        ax.errorbar([x(g) for g in line], mean, yerr=yerr, markersize=5, capsize=3, label=label, **style)
    classes = len(next(iter(lines.values()))[0].class_names)
    ax.axhline(100 / classes, color="0.4", linestyle=(0, (1, 2)), linewidth=1.2, label=f"chance (1/{classes})")
    ticks = sorted({x(g) for line in lines.values() for g in line})
    ax.set_xscale("log")
    ax.set_xticks(ticks, [(f"{t:.0f}" if t >= 10 else f"{t:.2g}") if per_class else percent(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(f"{'labels per class' if per_class else 'label fraction'} (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Label efficiency: mean and {level * 100:g} % interval (t over seeds; bootstrap for one run)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def examples_figure(run: Run) -> Figure:
    """A grid of test images titled predicted (probability) / true class; wrong predictions framed in red."""
    short = short_class_names(run.class_names)
    fig = new_figure((6.4, 7.0), class_legend(run.class_names))
    fig.suptitle(f"{run.title}\npredicted (probability) / true class; red = wrong", fontsize=10)
    for ax, image, label, prob in zip(fig.subplots(GRID, GRID).flat, *run.examples):
        pred = int(prob.argmax())
        colour = "black" if pred == label else "#C00000"
        ax.imshow(image, interpolation="nearest")  # uint8 RGB as saved; nearest keeps pixels sharp
        ax.set_title(f"{short[pred]} ({prob[pred]:.0%}) / {short[int(label)]}", fontsize=9, color=colour)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(colour)
            spine.set_linewidth(3 if pred != label else 0.5)
    for ax in fig.axes[len(run.examples.images) :]:
        ax.axis("off")
    return fig


def confusion_figure(runs: Sequence[Run], title: str) -> Figure:
    """Confusion matrix pooled over runs: each cell the count and its row rate (where one true class went)."""
    names = runs[0].class_names
    short = short_class_names(names)
    counts = np.zeros((len(names), len(names)), dtype=np.int64)
    for run in runs:
        np.add.at(counts, (run.labels, run.preds), 1)
    totals = counts.sum(axis=1)
    rates = counts / np.maximum(totals[:, None], 1)
    side = min(3 + 0.3 * len(names), 10)
    fig = new_figure((side + 1, side), class_legend(names))
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fontsize = 7 if len(names) <= 12 else 5
    for (i, j), rate in np.ndenumerate(rates):
        if counts[i, j]:  # a zero stays blank, so the confusions stand out
            colour = "white" if rate > 0.5 else "black"
            ax.text(j, i, f"{counts[i, j]}\n{rate:.0%}", ha="center", va="center", fontsize=fontsize, color=colour)
    ax.set_xticks(range(len(names)), short, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(len(names)), [f"{s} ({t})" for s, t in zip(short, totals)], fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (test images)")
    what = "test images" if len(runs) == 1 else f"predictions of {len(runs)} runs"
    ax.set_title(f"{title}\naccuracy {np.trace(counts) / counts.sum():.2%} · {counts.sum()} {what}", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="row rate")
    return fig


def log_figures(run: Run, log_dir: Path) -> None:
    """The run's example grid and confusion matrix as TensorBoard images (Images tab) in log_dir."""
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        figures = {"report/qualitative": examples_figure(run), "report/confusion": confusion_figure([run], run.title)}
        for tag, fig in figures.items():
            with literal_text(fig):
                fig.canvas.draw()
            pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
            writer.add_image(tag, pixels, global_step=run.record.epochs, dataformats="HWC")
    finally:
        writer.close()
