"""Compare finished runs: results table, validation curves, example grids and confusion matrices.

    python -m sslpath.report RUN_DIR... [--out DIR]

Reads only what sslpath.train leaves in a run dir (metrics.json, test_predictions.csv,
test_examples.npz, tb/), so a report can be rebuilt at any time without checkpoints or a GPU.
Figures are drawn on matplotlib's Agg canvas without pyplot: no GUI, no global backend state.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from sslpath.errors import UserError, exit_on_user_error
from sslpath.files import atomic_write_bytes, atomic_write_text, read_json

REPORT_DIR = "report"
SWEEP_RESULTS = "sweep_results"  # .md and .csv in the sweep dir
LABEL_EFFICIENCY_PNG = "label_efficiency.png"  # in the sweep's report dir
SWEEP_COLUMNS = ("Test accuracy", "Test AUC")  # of COLUMNS
RUN_FILES = ("metrics.json", "test_predictions.csv", "test_examples.npz")
GRID = 3  # the qualitative figure shows GRID × GRID test images
# output file -> (TensorBoard tag, y label, scale)
VAL_PLOTS = {
    "val_accuracy.png": ("val/acc", "validation accuracy (%)", 100.0),
    "val_loss.png": ("val/loss", "validation loss", 1.0),
}


@dataclass
class Run:
    """One finished run: its metrics, test labels and predictions, and validation curves."""

    dir: Path
    metrics: dict[str, Any]
    class_names: list[str]
    labels: np.ndarray
    preds: np.ndarray
    curves: dict[str, dict[int, float]]  # TensorBoard tag -> {epoch (1-based): value}

    @property
    def name(self) -> str:
        return self.metrics.get("run_name") or self.metrics["model"]

    @property
    def title(self) -> str:
        return f"{self.name} (seed {self.metrics.get('seed')}, {self.dir.name})"


# ----------------------------------------------------------------------------------------------
# Finding and reading runs


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Every run dir at or below each path: a run, a chained run with its pretrain/, a sweep dir."""
    found: dict[Path, None] = {}  # ordered set: a run named twice is reported once
    for path in map(Path, paths):
        runs = sorted(m.parent.resolve() for m in path.rglob(RUN_FILES[0]))
        if not runs:
            what = "does not exist" if not path.exists() else "holds no metrics.json, in it or below it"
            raise UserError(
                f"{path} {what}, so there is no finished run to report. Pass run dirs written by "
                "sslpath.train (outputs/runs/<time>_<name>, or a multirun sweep dir). A run dir without "
                f"metrics.json stopped before testing: finish it with `python -m sslpath.train "
                f"ckpt_path=last hydra.run.dir={path}` (plus its original overrides), or leave it out."
            )
        found.update(dict.fromkeys(runs))
    return list(found)


def load_run(run_dir: Path) -> Run:
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise UserError(
            f"{run_dir} lacks {', '.join(missing)}: the run was interrupted while writing its results or "
            "comes from an older sslpath. Re-run its test stage with the current sslpath.train, or "
            "leave it out of the report."
        )
    predictions = run_dir / "test_predictions.csv"
    with predictions.open(newline="") as f:
        header = next(csv.reader(f))
    label_pred = np.loadtxt(predictions, delimiter=",", skiprows=1, usecols=(1, 2), dtype=np.int64, ndmin=2)
    return Run(
        dir=run_dir,
        metrics=read_json(run_dir / "metrics.json"),
        class_names=[h.removeprefix("p_") for h in header[3:]],
        labels=label_pred[:, 0],
        preds=label_pred[:, 1],
        curves=read_val_curves(run_dir / "tb"),
    )


def read_val_curves(tb_dir: Path) -> dict[str, dict[int, float]]:
    """Validation scalars by epoch: Lightning logs `epoch` at the same steps, so it maps step -> epoch."""
    if not tb_dir.is_dir():
        return {}
    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    if "epoch" not in tags:
        return {}
    epoch_at = {e.step: int(e.value) for e in events.Scalars("epoch")}
    # A resumed run logs a step again; the later value wins, as in TensorBoard.
    return {
        tag: {epoch_at[e.step] + 1: e.value for e in events.Scalars(tag) if e.step in epoch_at}
        for tag, _, _ in VAL_PLOTS.values()
        if tag in tags
    }


def group_by_name(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs sharing a name (seeds of one model) form one row; rows keep first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.name, []).append(run)
    for name, group in groups.items():
        if any(run.class_names != group[0].class_names for run in group):
            raise UserError(
                f"runs named {name!r} have different classes ({[str(r.dir) for r in group]}); give runs on "
                "different data different run_name values."
            )
    return groups


# ----------------------------------------------------------------------------------------------
# Results table


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _cell(values: Sequence[float], fmt: str, scale: float = 1.0, unit: str = "") -> str:
    mean, std = mean_std(values)
    text = fmt.format(mean * scale)
    if len(values) > 1:
        text += " ± " + fmt.format(std * scale)
    return text + unit


def _wall_cell(values: Sequence[float]) -> str:
    if np.mean(values) >= 120:
        return _cell(values, "{:.1f}", 1 / 60, " min")
    return _cell(values, "{:.1f}", 1.0, " s")


# header -> (metrics.json key, cell formatter)
COLUMNS: dict[str, tuple[str, Callable[[Sequence[float]], str]]] = {
    "Test loss": ("test_loss", lambda v: _cell(v, "{:.4f}")),
    "Test accuracy": ("test_acc", lambda v: _cell(v, "{:.2f}", 100.0, "%")),
    "Test AUC": ("test_auc", lambda v: _cell(v, "{:.4f}")),
    "Epochs": ("epochs", lambda v: _cell(v, "{:.3g}")),
    "Wall time": ("wall_seconds", _wall_cell),
}


def markdown_table(groups: dict[str, list[Run]]) -> str:
    lines = ["| Model | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name, runs in groups.items():
        label = name.replace("|", "\\|") + (f" (n={len(runs)})" if len(runs) > 1 else "")
        cells = [fmt([run.metrics[key] for run in runs]) for key, fmt in COLUMNS.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(groups: dict[str, list[Run]]) -> str:
    """The table's numbers unformatted: mean and std per metric (std empty for a single run)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    keys = [key for key, _ in COLUMNS.values()]
    writer.writerow(["model", "n"] + [f"{key}_{stat}" for key in keys for stat in ("mean", "std")])
    for name, runs in groups.items():
        row: list[Any] = [name, len(runs)]
        for key in keys:
            mean, std = mean_std([run.metrics[key] for run in runs])
            row += [mean, std if len(runs) > 1 else ""]
        writer.writerow(row)
    return buf.getvalue()


def results_markdown(groups: dict[str, list[Run]], figures: dict[str, list[str]]) -> str:
    parts = [
        "# Results\n",
        markdown_table(groups),
        "Test metrics of each run's best checkpoint (by validation accuracy). Rows with n > 1 show "
        "mean ± sample std over the n runs sharing that model name (e.g. seeds).\n",
        "## Validation curves\n",
        "\n".join(f"![{Path(f).stem}]({f})" for f in VAL_PLOTS) + "\n",
    ]
    for name, files in figures.items():
        parts += [f"## {name}\n", " ".join(f"![{Path(f).stem}]({f})" for f in files) + "\n"]
    parts += ["## Runs\n", "".join(f"- {run.name}: `{run.dir}`\n" for runs in groups.values() for run in runs)]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# Sweep results: one row per (model, label fraction)


def label_fraction(run: Run) -> float:
    return float(run.metrics.get("label_fraction", 1.0))  # a metrics.json without it: every label


def group_by_fraction(runs: list[Run]) -> dict[tuple[str, float], list[Run]]:
    """(run name, label fraction) -> its runs (seeds); models keep first-seen order, fractions ascend."""
    return {
        (name, fraction): [run for run in group if label_fraction(run) == fraction]
        for name, group in group_by_name(runs).items()
        for fraction in sorted({label_fraction(run) for run in group})
    }


def sweep_markdown(cells: dict[tuple[str, float], list[Run]], figure: str | None) -> str:
    lines = ["| Model | Label fraction | n | " + " | ".join(SWEEP_COLUMNS) + " |", "|---|---:|---:|" + "---:|" * len(SWEEP_COLUMNS)]
    for (name, fraction), runs in cells.items():
        values = [COLUMNS[column][1]([run.metrics[COLUMNS[column][0]] for run in runs]) for column in SWEEP_COLUMNS]
        label = name.replace("|", "\\|")
        lines.append(f"| {label} | {fraction:g} | {len(runs)} | " + " | ".join(values) + " |")
    parts = [
        "# Sweep results\n",
        "\n".join(lines) + "\n",
        "Test metrics of each job's best checkpoint (by validation accuracy): mean ± sample std over the n "
        "jobs (seeds) that share a model and a label fraction (`data.label_fraction`).\n",
    ]
    if figure:
        parts += ["## Label efficiency\n", f"![label efficiency]({figure})\n"]
    return "\n".join(parts)


def sweep_csv(cells: dict[tuple[str, float], list[Run]]) -> str:
    """The sweep table unformatted: mean and std per metric (std empty for a single run)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    keys = [COLUMNS[column][0] for column in SWEEP_COLUMNS]
    writer.writerow(["model", "label_fraction", "n"] + [f"{key}_{stat}" for key in keys for stat in ("mean", "std")])
    for (name, fraction), runs in cells.items():
        row: list[Any] = [name, fraction, len(runs)]
        for key in keys:
            mean, std = mean_std([run.metrics[key] for run in runs])
            row += [mean, std if len(runs) > 1 else ""]
        writer.writerow(row)
    return buf.getvalue()


def write_sweep_results(runs: list[Run], sweep_dir: Path, report_dir: Path) -> Path:
    """sweep_results.md/.csv in sweep_dir; label_efficiency.png in report_dir when fractions differ."""
    cells = group_by_fraction(runs)
    figure = None
    if len({fraction for _, fraction in cells}) > 1:
        save_png(label_efficiency_figure(cells), report_dir / LABEL_EFFICIENCY_PNG)
        figure = os.path.relpath(report_dir / LABEL_EFFICIENCY_PNG, sweep_dir)
    atomic_write_text(sweep_dir / f"{SWEEP_RESULTS}.csv", sweep_csv(cells))
    return atomic_write_text(sweep_dir / f"{SWEEP_RESULTS}.md", sweep_markdown(cells, figure))


# ----------------------------------------------------------------------------------------------
# Figures


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def curves_figure(groups: dict[str, list[Run]], tag: str, ylabel: str, scale: float) -> Figure:
    """One line per model (mean over its runs, ±std band when there are several)."""
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    last_epoch = 1
    for name, runs in groups.items():
        by_epoch: dict[int, list[float]] = {}
        for run in runs:
            for epoch, value in run.curves.get(tag, {}).items():
                by_epoch.setdefault(epoch, []).append(value * scale)
        if not by_epoch:
            continue
        epochs = sorted(by_epoch)
        last_epoch = max(last_epoch, epochs[-1])
        mean, std = np.array([mean_std(by_epoch[e]) for e in epochs]).T
        label = name + (f" (n={len(runs)})" if len(runs) > 1 else "")
        (line,) = ax.plot(epochs, mean, marker="o", markersize=4, label=label)
        if len(runs) > 1:
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.5, last_epoch + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    else:
        ax.text(0.5, 0.5, f"no {tag} in the runs' TensorBoard logs", ha="center", transform=ax.transAxes)
    return fig


def label_efficiency_figure(cells: dict[tuple[str, float], list[Run]]) -> Figure:
    """Test accuracy against label fraction (log x): one line per model, error bars = std over seeds."""
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    for name in dict.fromkeys(name for name, _ in cells):
        fractions = [fraction for n, fraction in cells if n == name]
        stats = np.array([mean_std([run.metrics["test_acc"] * 100 for run in cells[name, f]]) for f in fractions])
        seeds = sorted({len(cells[name, f]) for f in fractions})
        label = name + (f" (n={'/'.join(map(str, seeds))})" if seeds != [1] else "")
        ax.errorbar(fractions, stats[:, 0], yerr=stats[:, 1], marker="o", markersize=5, capsize=4, label=label)
    all_fractions = sorted({fraction for _, fraction in cells})
    ax.set_xscale("log")
    ax.set_xticks(all_fractions, [f"{f:g}" for f in all_fractions])
    ax.minorticks_off()
    ax.set_xlabel("label fraction (share of training labels, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Label efficiency: mean ± std over seeds", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def examples_figure(run: Run, title: str) -> Figure:
    """A grid of test images titled predicted / ground truth; wrong predictions in red."""
    with np.load(run.dir / "test_examples.npz", allow_pickle=False) as examples:
        images = examples["images"][: GRID * GRID]
        labels = examples["labels"][: GRID * GRID]
        probs = examples["probs"][: GRID * GRID]
    names = run.class_names
    fig = _figure((8.5, 9.5))
    fig.suptitle(f"{title}\npredicted (probability) / ground truth; red = wrong", fontsize=11)
    for ax, image, label, prob in zip(fig.subplots(GRID, GRID).flat, images, labels, probs):
        pred = int(prob.argmax())
        colour = "black" if pred == label else "red"
        ax.imshow(image, interpolation="nearest")  # uint8 RGB as saved; nearest keeps pixels sharp
        text = f"{names[pred]} ({prob[pred]:.0%}) / {names[int(label)]}"
        ax.set_title(textwrap.fill(text, 34), fontsize=9, color=colour)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(colour)
            spine.set_linewidth(4 if pred != label else 0.5)
    for ax in fig.axes[len(images) :]:
        ax.axis("off")
    return fig


def confusion_figure(runs: list[Run], title: str) -> Figure:
    """Row-normalised confusion matrix (each row: where one true class went), pooled over runs."""
    names = runs[0].class_names
    counts = np.zeros((len(names), len(names)))
    for run in runs:
        np.add.at(counts, (run.labels, run.preds), 1)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure((8, 7))
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), rate in np.ndenumerate(rates):
        ax.text(j, i, f"{rate:.2f}", ha="center", va="center", fontsize=8, color="white" if rate > 0.5 else "black")
    ticks = range(len(names))
    wrapped = [textwrap.fill(n, 20) for n in names]
    ax.set_xticks(ticks, wrapped, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(ticks, wrapped, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(f"{title}\n{int(counts.sum())} test images, rows sum to 1", fontsize=11)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def save_png(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def log_figures(run: Run, figures: dict[str, Figure]) -> None:
    """Into the run's own TensorBoard (Images tab), next to its training curves."""
    writer = SummaryWriter(log_dir=str(run.dir / "tb"))
    try:
        for tag, fig in figures.items():
            writer.add_figure(tag, fig, global_step=run.metrics.get("epochs"), close=False)
    finally:
        writer.close()


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


# ----------------------------------------------------------------------------------------------
# Entry points


def write_report(run_dirs: Sequence[str | Path], out_dir: Path) -> Path:
    """Write the report for these runs (dirs are expanded as by find_run_dirs); returns results.md."""
    groups = group_by_name([load_run(d) for d in find_run_dirs(run_dirs)])
    out_dir = Path(out_dir)
    for filename, (tag, ylabel, scale) in VAL_PLOTS.items():
        save_png(curves_figure(groups, tag, ylabel, scale), out_dir / filename)
    figures: dict[str, list[str]] = {}
    for name, runs in groups.items():
        files = [f"qualitative_{slug(name)}.png", f"confusion_{slug(name)}.png"]
        pooled = f"{name}, {len(runs)} runs pooled" if len(runs) > 1 else runs[0].title
        save_png(examples_figure(runs[0], runs[0].title), out_dir / files[0])
        save_png(confusion_figure(runs, pooled), out_dir / files[1])
        figures[name] = files
        for run in runs:
            per_run = {
                "report/qualitative": examples_figure(run, run.title),
                "report/confusion": confusion_figure([run], run.title),
            }
            log_figures(run, per_run)
    atomic_write_text(out_dir / "results.csv", csv_table(groups))
    return atomic_write_text(out_dir / "results.md", results_markdown(groups, figures))


def default_out_dir(run_dirs: Sequence[Path]) -> Path:
    """report/ in the run dir itself, or in the common parent of several."""
    return Path(os.path.commonpath([str(d) for d in run_dirs])) / REPORT_DIR


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="sslpath.report",
        description="Compare finished sslpath runs: results.md/.csv, validation curves, example grids, "
        "confusion matrices. Every run dir at or below each RUN_DIR is included (a sweep's jobs, a chained "
        "fine-tune's pretrain/).",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, help="output dir (default: report/ under the runs' common parent)")
    args = parser.parse_args(argv)
    with exit_on_user_error("sslpath.report"):
        run_dirs = find_run_dirs(args.run_dirs)
        results = write_report(run_dirs, args.out or default_out_dir(run_dirs))
    print(f"sslpath.report: {len(run_dirs)} run(s) -> {results}")


if __name__ == "__main__":
    main()
