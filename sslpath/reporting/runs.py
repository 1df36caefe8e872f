"""Compare finished runs: results table, validation curves, example grids, confusion matrices.

    python -m sslpath.report RUN_DIR... [--out DIR] [--formats png,pdf] [--dpi 300] [--no-tensorboard] [--compare A,B]

Reads only what sslpath.train leaves in a run dir (metrics.json, test_predictions.csv,
test_examples.npz, tb/), so a report can be rebuilt at any time without checkpoints or a GPU.
Every input is checked before anything is written, and the report is built in a temporary dir
beside its destination and renamed into place: a bad input or a failed write leaves the previous
report (or none), never half of one. Only a dir marked as a report (.sslpath-report) is ever replaced:
any other existing --out, one holding the runs, or the current dir is refused. Figures are drawn on
matplotlib's Agg canvas without pyplot: no GUI, no global backend state.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import re
import reprlib
import secrets
import shutil
import textwrap
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from sslpath.core.errors import UserError, exit_on_user_error
from sslpath.core.files import atomic_write_bytes, atomic_write_text, csv_text
from sslpath.core.names import path_name
from sslpath.results.compare import PairedComparisons, checked_bootstrap, paired_comparisons
from sslpath.results.metrics import classification_results
from sslpath.results.stats import Bootstrap

REPORT_DIR = "report"
SWEEP_RESULTS = "sweep_results"  # .md and .csv in the sweep dir
LABEL_EFFICIENCY = "label_efficiency"  # figure stem, in the report dir
TB_REPORT = "report"  # <run>/tb/report/: the report's images, rewritten whole by every report
RUN_FILES = ("metrics.json", "test_predictions.csv", "test_examples.npz")
FORMATS = ("png", "pdf", "svg")
GRID = 3  # the qualitative figure shows GRID × GRID test images
ACC_TAG = "val/acc"
# figure stem -> (TensorBoard tag, y label, scale)
VAL_PLOTS = {
    "val_accuracy": (ACC_TAG, "validation accuracy (%)", 100.0),
    "val_loss": ("val/loss", "validation loss", 1.0),
}
RERUN = (
    "Re-run the run's test stage with the current sslpath.train (`python -m sslpath.train ckpt_path=last "
    "hydra.run.dir=<run dir>` plus its original overrides), or leave the run out of the report."
)

# One colour per model kind in every figure: Paul Tol's "muted" scheme (colour-blind safe).
KIND_COLOURS = {
    "baseline": "#555555",
    "ssl": "#CC6677",
    "simclr": "#CC6677",
    "finetune": "#117733",
    "probe": "#88CCEE",
    "byol": "#DDCC77",
    "mocov3": "#332288",
    "barlowtwins": "#AA4499",
    "vicreg": "#44AA99",
    "dino": "#882255",
}
FALLBACK_COLOURS = ("#999933", "#E69F00", "#56B4E9", "#D55E00", "#0072B2", "#009E73")
SSL_KINDS = frozenset({"ssl", "simclr", "byol", "mocov3", "barlowtwins", "vicreg", "dino"})
LINESTYLES = ("-", "--", ":", "-.")  # lines of one kind (other names or label fractions) differ in dash and marker
MARKERS = ("o", "s", "^", "D", "v")
# The abbreviations of Kather et al. (2019), whose NCT-CRC-HE-100K tiles PathMNIST is made of.
PATHMNIST_ABBREVIATIONS = {
    "adipose": "ADI",
    "background": "BACK",
    "debris": "DEB",
    "lymphocytes": "LYM",
    "mucus": "MUC",
    "smooth muscle": "MUS",
    "normal colon mucosa": "NORM",
    "cancer-associated stroma": "STR",
    "colorectal adenocarcinoma epithelium": "TUM",
}
SHORT_NAME = 10  # longest class name shown as is in ticks and grid titles
MARKER = ".sslpath-report"  # in every report dir written: only a dir carrying it is ever replaced
# What an sslpath report held before the marker existed: such a dir (results.md among them) is replaced too.
LEGACY_REPORT_FILE = re.compile(
    r"results\.(md|csv)|(val_accuracy|val_loss|label_efficiency|robustness(_comparison)?|qualitative_.+|confusion_.+)"
    r"\.(png|pdf|svg|md|csv)"
)
TB_EVENTS = "events.out.tfevents."  # all a run's tb/report/ holds
MAX_EPOCHS = 10**7  # more is no real run: an edited or corrupt metrics.json
MAX_WALL_SECONDS = 10**9  # about 32 years
# test_examples.npz holds a handful of tiles for the grid (36 by default): larger declared arrays are refused
MAX_EXAMPLES, MAX_EXAMPLE_SIDE, MAX_EXAMPLE_BYTES = 10_000, 1024, 256 * 2**20
AUC_SLACK = 1.5e-6  # test_predictions.csv rounds probabilities to 6 decimals: pairs this close may be either order


# ----------------------------------------------------------------------------------------------
# Reading and checking runs


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_rate(value: Any) -> bool:
    return _is_number(value) and 0 <= value <= 1


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


# metrics.json key -> (check, what it must be). Optional keys may be missing (older runs), not malformed.
REQUIRED_METRICS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (_is_name, "the model kind, a non-empty string"),
    "run_name": (_is_name, "a non-empty string"),
    "seed": (_is_int, "an integer"),
    "label_fraction": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "test_loss": (_is_number, "a number"),
    "test_acc": (_is_rate, "a number from 0 to 1"),
    "test_auc": (lambda v: v is None or _is_rate(v), "a number from 0 to 1, or null"),
    "epochs": (lambda v: _is_int(v) and 0 <= v <= MAX_EPOCHS, f"an integer from 0 to {MAX_EPOCHS:,}"),
    "wall_seconds": (
        lambda v: _is_number(v) and 0 <= v <= MAX_WALL_SECONDS,
        f"a number of seconds from 0 to {MAX_WALL_SECONDS:,}",
    ),
}
SELECTION_TEXT = {  # metrics.json `selection` (sslpath.training.protocol) -> how the tested checkpoint was chosen
    "best_val": "the best validation accuracy on the whole validation split",
    "val_subset": "the best validation accuracy on a share of the validation split the size of its label fraction",
    "last": "the last epoch, without validation labels",
}


OPTIONAL_METRICS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "val_knn_acc": (lambda v: v is None or _is_rate(v), "a number from 0 to 1, or null"),
    "absent_classes": (lambda v: isinstance(v, list) and all(map(_is_name, v)), "a list of class names"),
    "per_class_acc": (
        lambda v: isinstance(v, dict) and all(x is None or _is_number(x) for x in v.values()),
        "an object {class name: accuracy or null}",
    ),
    "train_labels_per_class": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "selection": (lambda v: v in SELECTION_TEXT, "one of best_val, val_subset, last"),
}
JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


class Examples(NamedTuple):
    """The first GRID × GRID images of test_examples.npz with their labels and class probabilities."""

    images: np.ndarray  # uint8 N×H×W×3
    labels: np.ndarray  # int N
    probs: np.ndarray  # float N×C


@dataclass
class Run:
    """One finished run, checked: metrics, test labels and predictions, example images, validation curves."""

    dir: Path
    metrics: dict[str, Any]
    class_names: list[str]
    labels: np.ndarray
    preds: np.ndarray
    examples: Examples
    curves: dict[str, dict[int, float]]  # TensorBoard tag -> {epoch (1-based): value}

    @property
    def name(self) -> str:
        return self.metrics["run_name"]

    @property
    def kind(self) -> str:
        return self.metrics["model"].lower()

    @property
    def colour_key(self) -> str:
        """Fine-tunes and probes take their SSL method's colour, so methods stay apart in one figure."""
        return str(self.metrics.get("pretrain_method") or self.kind).lower()

    @property
    def fraction(self) -> float:
        return float(self.metrics["label_fraction"])

    @property
    def title(self) -> str:
        """What a reader needs (model, labels, seed), not dir names or hashes."""
        return f"{self.name} · {percent(self.fraction)} labels · seed {self.metrics['seed']}"


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """The run dirs the paths name: a path holding metrics.json is that one run (never what lies below it:
    a run dir may hold other runs, e.g. its pretrain/); any other path gives every run dir below it (a sweep
    dir, a chained run stopped after its SSL stage)."""
    found: dict[Path, None] = {}  # ordered set: a run named twice is reported once
    for path in map(Path, paths):
        if (path / RUN_FILES[0]).is_file():
            runs = [path.resolve()]
        else:
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
    """Read a run dir and check every file against the others; UserError on the first problem."""
    run_dir = Path(run_dir)
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise UserError(
            f"{run_dir} lacks {', '.join(missing)}: the run was interrupted while writing its results or "
            "comes from an older sslpath. Re-run its test stage with the current sslpath.train, or "
            "leave it out of the report."
        )
    metrics = read_metrics(run_dir / "metrics.json")
    class_names, labels, preds, probs = read_predictions(run_dir / "test_predictions.csv")
    check_consistency(run_dir, metrics, class_names, labels, preds)
    check_auc(run_dir, metrics, class_names, labels, probs)
    return Run(
        dir=run_dir,
        metrics=metrics,
        class_names=class_names,
        labels=labels,
        preds=preds,
        examples=read_examples(run_dir / "test_examples.npz", len(class_names)),
        curves=read_val_curves(run_dir / "tb"),
    )


def _invalid(path: Path, problem: str) -> UserError:
    return UserError(f"{path} {problem}. {RERUN}")


def read_metrics(path: Path) -> dict[str, Any]:
    """metrics.json as a dict whose keys the report uses all have the expected types and ranges."""

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    try:
        metrics = json.loads(path.read_text(), parse_constant=no_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise _invalid(path, f"cannot be read as JSON ({type(err).__name__}: {err})") from None
    if not isinstance(metrics, dict):
        raise _invalid(path, f"holds {JSON_TYPES.get(type(metrics), 'null')}, not an object of metrics")
    if where := _non_finite(metrics):
        raise _invalid(path, f"has a number too large to be finite at {where}: no run measures infinity")
    problems = [f"`{key}` is missing" for key in REQUIRED_METRICS if key not in metrics]
    for key, (check, what) in (REQUIRED_METRICS | OPTIONAL_METRICS).items():
        if key in metrics and not check(metrics[key]):
            problems.append(f"`{key}` is {reprlib.repr(metrics[key])}, not {what}")
    if problems:
        raise _invalid(path, "is incomplete or malformed: " + "; ".join(problems))
    return metrics


def _non_finite(value: Any) -> str | None:
    """Where in a parsed JSON value a float is infinite or NaN (e.g. `1e999`), as `key.key[index]`; None if nowhere."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where or "the top level"
        if isinstance(item, dict):
            stack += [(f"{where}.{key}".lstrip("."), v) for key, v in item.items()]
        elif isinstance(item, list):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(item)]
    return None


PROB_SUM_TOLERANCE = 1e-3  # 6 decimals per class: rounding moves a sum by at most classes × 5e-7


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Class names (from the p_<name> columns), the label and pred columns and the probabilities, every row checked."""
    try:
        with path.open(newline="") as f:
            rows = [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise _invalid(path, f"cannot be read as CSV ({err})") from None
    if not rows:
        raise _invalid(path, "is empty")
    header = rows[0]
    names = [column.removeprefix("p_") for column in header[3:]]
    if (
        header[:3] != ["index", "label", "pred"]
        or len(names) < 2
        or not all(column.startswith("p_") and column != "p_" for column in header[3:])
        or len(set(names)) < len(names)
    ):
        raise _invalid(
            path,
            f"starts with {reprlib.repr(','.join(header))}, not the header index,label,pred followed by one "
            "p_<class name> column per class (at least two classes, each named once)",
        )
    if len(rows) == 1:
        raise _invalid(path, "has a header but no predictions")
    if short := next((i for i, row in enumerate(rows[1:], start=1) if len(row) != len(header)), None):
        raise _invalid(path, f"has {len(rows[short])} fields in data row {short}, but {len(header)} columns")
    table = np.array(rows[1:])
    try:
        ints, probs = table[:, :3].astype(np.int64), table[:, 3:].astype(np.float64)
    except ValueError as err:
        raise _invalid(path, f"has a value that is not a number ({err})") from None
    classes = len(names)
    bad_rows = {
        f"label or pred outside 0..{classes - 1} (the {classes} classes)": (ints[:, 1:] < 0) | (ints[:, 1:] >= classes),
        "a probability outside 0..1": ~((probs >= 0) & (probs <= 1)),
    }
    for what, bad in bad_rows.items():
        if bad.any():
            raise _invalid(path, f"has {what} in data row {int(bad.any(axis=1).argmax()) + 1}")
    # Rows as sslpath writes them (6 decimals): probabilities that sum to 1, pred the most probable class,
    # each test image once. An edited pred column would otherwise draw a confusion matrix the
    # probabilities contradict.
    row_checks = {
        "probabilities that do not sum to 1": np.abs(probs.sum(axis=1) - 1) > PROB_SUM_TOLERANCE,
        "a pred that is not the most probable class": probs[np.arange(len(probs)), ints[:, 2]] < probs.max(axis=1) - 1e-6,
        "an index that repeats an earlier row's": _repeats(ints[:, 0]),
    }
    for what, bad in row_checks.items():
        if bad.any():
            raise _invalid(path, f"has {what} in data row {int(bad.argmax()) + 1}")
    return names, ints[:, 1], ints[:, 2], probs


def _repeats(values: np.ndarray) -> np.ndarray:
    """True where a value already appeared in an earlier position."""
    _, first = np.unique(values, return_index=True)
    repeated = np.ones(len(values), dtype=bool)
    repeated[first] = False
    return repeated


def check_consistency(
    run_dir: Path, metrics: dict[str, Any], class_names: list[str], labels: np.ndarray, preds: np.ndarray
) -> None:
    """metrics.json must describe these predictions: the same classes, and the accuracy they give.

    An edited or stale metrics.json would otherwise put numbers in the report that no prediction supports.
    """
    path = run_dir / "metrics.json"
    per_class = list(metrics.get("per_class_acc", class_names))
    if sorted(per_class) != sorted(class_names):
        raise _invalid(
            path,
            f"has per_class_acc for {len(per_class)} classes ({reprlib.repr(per_class)}), but "
            f"test_predictions.csv has {len(class_names)} ({reprlib.repr(class_names)}): the two files come "
            "from different runs or datasets",
        )
    absent = metrics.get("absent_classes", [])
    present = {class_names[i] for i in np.unique(labels)}
    if wrong := [name for name in absent if name not in class_names or name in present]:
        raise _invalid(path, f"lists {reprlib.repr(wrong)} in absent_classes: test_predictions.csv has images of them")
    correct = int((labels == preds).sum())
    if abs(correct / len(labels) - metrics["test_acc"]) > 1e-6:
        raise UserError(
            f"run {metrics['run_name']!r} ({run_dir}): metrics.json says test_acc = {metrics['test_acc']:.6f}, but "
            f"test_predictions.csv has {correct} of {len(labels)} predictions right ({correct / len(labels):.6f}). "
            "One of the files was edited or comes from another evaluation, so the report would show a number the "
            f"predictions do not support. {RERUN}"
        )


def auc_bounds(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float] | None:
    """The least and greatest macro one-vs-rest AUC (over the classes present) that probabilities rounded as in
    test_predictions.csv allow: a positive and a negative closer than AUC_SLACK may have been in either order.
    None when fewer than two classes are present (no AUC)."""
    bounds = []
    for c in np.unique(labels):
        positive, negative = probs[labels == c, c], np.sort(probs[labels != c, c])
        pairs = len(positive) * len(negative)
        surely = np.searchsorted(negative, positive - AUC_SLACK, side="left").sum()
        maybe = np.searchsorted(negative, positive + AUC_SLACK, side="right").sum()
        bounds.append((surely / pairs, maybe / pairs))
    return tuple(np.mean(bounds, axis=0).tolist()) if len(bounds) > 1 else None


def check_auc(run_dir: Path, metrics: dict[str, Any], class_names: list[str], labels: np.ndarray, probs: np.ndarray) -> None:
    """metrics.json's test_auc must be the macro AUC (sslpath.results.metrics.classification_results) of the predictions."""
    claimed = metrics["test_auc"]
    logits = torch.from_numpy(np.log(np.maximum(probs, 1e-30)))
    recomputed = classification_results(logits, torch.from_numpy(labels), class_names)["test_auc"]
    bounds = auc_bounds(labels, probs)
    if (recomputed is None) != (bounds is None):  # cannot happen: both count the classes present
        bounds = None if recomputed is None else (recomputed, recomputed)
    if claimed is None and bounds is None:
        return
    if claimed is not None and bounds is not None and bounds[0] - 1e-6 <= claimed <= bounds[1] + 1e-6:
        return
    says = "null" if claimed is None else f"{claimed:.6f}"
    gives = "no AUC (fewer than two classes present)" if recomputed is None else f"a macro AUC of {recomputed:.6f}"
    raise UserError(
        f"run {metrics['run_name']!r} ({run_dir}): metrics.json says test_auc = {says}, but the probabilities in "
        f"test_predictions.csv give {gives}. One of the files was edited or comes from another evaluation, so the "
        f"report would show a number the predictions do not support. {RERUN}"
    )


def _describe(array: np.ndarray) -> str:
    return f"{array.dtype} of shape {array.shape}"


def read_examples(path: Path, num_classes: int) -> Examples:
    """The example grid's images, checked; never unpickled (allow_pickle=False), whatever the file holds."""
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise _invalid(path, "is a single .npy array, not an .npz archive of images, labels and probs")
        with npz:
            keys = [key for key in ("images", "labels", "probs") if key in npz.files]
            for key in keys:  # declared shapes first: a header may claim terabytes
                _check_example_header(npz.zip, path, key)
            arrays = {key: npz[key] for key in keys}
    except ValueError:  # numpy's text would suggest allow_pickle=True: never for a file of unknown origin
        raise _invalid(
            path,
            "cannot be read as plain NumPy arrays: it is damaged, not an .npz file, or holds pickled Python "
            "objects, which the report never loads",
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise _invalid(path, f"is not a readable .npz archive ({type(err).__name__}: {err})") from None
    if missing := [key for key in ("images", "labels", "probs") if key not in arrays]:
        raise _invalid(path, f"lacks the arrays {', '.join(missing)}")
    images, labels, probs = arrays["images"], arrays["labels"], arrays["probs"]
    n = len(images) if images.ndim else 0
    problems = []
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or n == 0:
        problems.append(f"`images` is {_describe(images)}, not uint8 N×H×W×3 (RGB) with N ≥ 1")
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        problems.append(f"`labels` is {_describe(labels)}, not {n} integers")
    elif not ((labels >= 0) & (labels < num_classes)).all():
        problems.append(f"`labels` has values outside 0..{num_classes - 1}")
    if probs.dtype.kind != "f" or probs.shape != (n, num_classes):
        problems.append(f"`probs` is {_describe(probs)}, not floats of shape ({n}, {num_classes}) (one per class)")
    if problems:
        raise _invalid(path, "does not hold what the report shows: " + "; ".join(problems))
    return Examples(images[: GRID * GRID], labels[: GRID * GRID], probs[: GRID * GRID])


def _check_example_header(zf: zipfile.ZipFile, path: Path, key: str) -> None:
    """Refuse a member of test_examples.npz whose .npy header declares more than a handful of example tiles.
    ValueError (as np.load raises) for a member that is no plain .npy array."""
    name = f"{key}.npy" if f"{key}.npy" in zf.namelist() else key
    with zf.open(name) as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)  # ValueError for anything but a plain header
    if dtype.hasobject or any(d < 0 for d in shape):
        raise ValueError(f"{key} holds Python objects or declares the shape {shape}")
    size = math.prod(shape) * dtype.itemsize
    too_big = size > MAX_EXAMPLE_BYTES or (len(shape) >= 1 and shape[0] > MAX_EXAMPLES)
    if key == "images" and len(shape) >= 3:
        too_big |= max(shape[1:3]) > MAX_EXAMPLE_SIDE
    if too_big:
        raise _invalid(
            path,
            f"declares `{key}` of shape {shape} ({dtype}, {size / 2**20:,.0f} MiB), not a handful of example tiles "
            f"(at most {MAX_EXAMPLES:,} images of at most {MAX_EXAMPLE_SIDE} px a side, {MAX_EXAMPLE_BYTES // 2**20} MiB "
            "an array); it was not loaded",
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
    # An epoch that is no whole number in range (NaN, 1e30: a corrupt or foreign log) marks no point.
    epoch_at = {e.step: int(e.value) for e in events.Scalars("epoch") if math.isfinite(e.value) and 0 <= e.value <= MAX_EPOCHS}
    # A resumed run logs a step again; the later value wins, as in TensorBoard.
    return {
        tag: {epoch_at[e.step] + 1: e.value for e in events.Scalars(tag) if e.step in epoch_at}
        for tag, _, _ in VAL_PLOTS.values()
        if tag in tags
    }


# ----------------------------------------------------------------------------------------------
# Grouping: one row per (run name, label fraction), seeds pooled


def percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


@dataclass
class Group:
    """Runs pooled into one table row and one confusion matrix: one run name and label fraction, any seeds."""

    name: str
    fraction: float
    runs: list[Run]

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
        seeds = sorted({run.metrics["seed"] for run in self.runs})
        pooled = f"seed {seeds[0]}" if len(self.runs) == 1 else f"seeds {', '.join(map(str, seeds))} (pooled)"
        return f"{self.name} · {percent(self.fraction)} labels · {pooled}"

    def label(self, with_fraction: bool) -> str:
        return f"{self.name}, {percent(self.fraction)} labels" if with_fraction else self.name

    def values(self, key: str) -> list[float]:
        """The runs' values of a metric; runs without it (or with null) are left out."""
        return [run.metrics[key] for run in self.runs if run.metrics.get(key) is not None]


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """One group per (run name, label fraction): names in first-seen order, fractions ascending within a name.

    A group's runs are its seeds, so n is the number of distinct seeds: a seed that appears twice (a copied
    run dir, a rerun with the same seed, or runs that differ in something other than the seed under one run
    name) is refused rather than counted twice, which would inflate n and shrink the ±. A run dir named
    twice is one run already (find_run_dirs)."""
    by_key: dict[tuple[str, float], list[Run]] = {}
    for run in runs:
        by_key.setdefault((run.name, run.fraction), []).append(run)
    names = dict.fromkeys(name for name, _ in by_key)
    groups = [Group(name, f, by_key[name, f]) for name in names for n, f in sorted(by_key) if n == name]
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
            twin = first_of_seed.setdefault(run.metrics["seed"], run)
            if twin is not run:
                raise UserError(
                    f"{twin.dir} and {run.dir} are both seed {run.metrics['seed']} of {group.name!r} with "
                    f"{percent(group.fraction)} labels: the same seed twice is not two replicates (a copy of a run, "
                    "or a rerun with the same seed, would inflate n and shrink the ±). Report one of them, or "
                    "give runs that differ in more than the seed different run_name values."
                )
    return groups


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


# ----------------------------------------------------------------------------------------------
# Tables: results.md/.csv and sweep_results.md/.csv share one builder, with different columns


@dataclass(frozen=True)
class Column:
    """A table column: a metrics.json key shown as mean ± std, times scale, with `digits` decimals."""

    header: str
    key: str
    scale: float = 1.0
    digits: int = 4

    def cell(self, group: Group) -> str:
        values = group.values(self.key)
        if not values:
            return "—"
        mean, std = mean_std(values)
        text = f"{mean * self.scale:.{self.digits}f}"
        if len(values) > 1:
            text += f" ± {std * self.scale:.{self.digits}f}"
        return text + (f" (n={len(values)})" if len(values) < len(group.runs) else "")


COLUMNS = (
    Column("Test accuracy (%)", "test_acc", 100.0, 2),
    Column("Test AUC", "test_auc"),
    Column("Val kNN accuracy (%)", "val_knn_acc", 100.0, 2),
    Column("Test loss", "test_loss"),
    Column("Epochs", "epochs", digits=0),
    Column("Wall time (min)", "wall_seconds", 1 / 60, 1),
)
SWEEP_COLUMNS = COLUMNS[:2]


def markdown_table(groups: Sequence[Group], columns: Sequence[Column]) -> str:
    header = ["Model", "Label fraction", "n", *(column.header for column in columns)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for group in groups:
        cells = [group.name.replace("|", "\\|"), f"{group.fraction:g}", str(len(group.runs))]
        lines.append("| " + " | ".join(cells + [column.cell(group) for column in columns]) + " |")
    return "\n".join(lines) + "\n"


def csv_table(groups: Sequence[Group], columns: Sequence[Column]) -> str:
    """The table's numbers unformatted: mean and std per metric (std empty below two values, both without any)."""
    stats = [f"{column.key}_{stat}" for column in columns for stat in ("mean", "std")]
    rows: list[list[Any]] = [["model", "kind", "label_fraction", "n", *stats]]
    for group in groups:
        row: list[Any] = [group.name, group.kind, group.fraction, len(group.runs)]
        for column in columns:
            values = group.values(column.key)
            mean, std = mean_std(values) if values else ("", "")
            row += [mean, std if len(values) > 1 else ""]
        rows.append(row)
    return csv_text(rows)


# ----------------------------------------------------------------------------------------------
# Figures


def kind_colour(kind: str) -> str:
    """The kind's fixed colour; an unknown kind gets one chosen by a hash of its name, the same every time."""
    kind = kind.lower()
    return KIND_COLOURS.get(kind) or FALLBACK_COLOURS[zlib.crc32(kind.encode()) % len(FALLBACK_COLOURS)]


def line_styles(kinds: Sequence[str]) -> list[dict[str, str]]:
    """Plot styles for lines of these kinds: the kind's colour; lines sharing a kind get other dashes and markers."""
    seen: Counter[str] = Counter()
    styles = []
    for kind in kinds:
        i = seen[kind]
        seen[kind] += 1
        dash, marker = LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]
        styles.append({"color": kind_colour(kind), "linestyle": dash, "marker": marker})
    return styles


def short_class_names(names: Sequence[str]) -> list[str]:
    """Labels that fit a matrix cell or a grid title: PathMNIST's abbreviations, else names of up to
    SHORT_NAME characters as they are, else each name's first word, else the class index."""
    if all(name in PATHMNIST_ABBREVIATIONS for name in names):
        return [PATHMNIST_ABBREVIATIONS[name] for name in names]
    first_words = [re.split(r"[\s_-]+", name.strip())[0] for name in names]
    for candidate in (list(names), first_words):
        if all(0 < len(short) <= SHORT_NAME for short in candidate) and len(set(candidate)) == len(names):
            return candidate
    return [str(i) for i in range(len(names))]


def class_legend(names: Sequence[str]) -> str:
    """'ADI = adipose; BACK = background; …' for the short names that differ; '' when none does."""
    pairs = [f"{short} = {name}" for short, name in zip(short_class_names(names), names) if short != name]
    # no-break spaces keep each pair on one line when the legend wraps
    return textwrap.fill("; ".join(pair.replace(" ", "\u00a0") for pair in pairs), 100)


def _figure(size: tuple[float, float], legend: str = "") -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    if legend:
        fig.supxlabel(legend, fontsize=7, color="0.25")
    return fig


def curves_figure(groups: Sequence[Group], tag: str, ylabel: str, scale: float) -> Figure:
    """One line per group (mean over its runs, ±std band when there are several).

    An SSL model's val/acc is its online linear probe's (a linear head on detached features), not a
    fine-tuned network's, and its legend says so.
    """
    fig = _figure((6.4, 4.0))
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
        if tag == ACC_TAG and group.kind in SSL_KINDS:
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


def label_efficiency_figure(groups: Sequence[Group]) -> Figure | None:
    """Test accuracy against labels per class (log x): one line per model name run at several label
    fractions, error bars = std over seeds, a dotted chance line at 1 / number of classes. None when no
    model was run at several fractions.

    x is metrics.json's `train_labels_per_class` (labelled training images per class: label fraction ×
    training-set size / classes) when every plotted run has it. Runs from before that key lack it; then x
    is the label fraction and the axis is labelled "label fraction".
    """
    lines = {name: [g for g in groups if g.name == name] for name in dict.fromkeys(g.name for g in groups)}
    lines = {name: line for name, line in lines.items() if len(line) > 1}
    if not lines:
        return None
    per_class = all("train_labels_per_class" in run.metrics for line in lines.values() for g in line for run in g.runs)

    def x(group: Group) -> float:
        return float(np.mean(group.values("train_labels_per_class"))) if per_class else group.fraction

    fig = _figure((6.4, 4.0))
    ax = fig.add_subplot()
    for (name, line), style in zip(lines.items(), line_styles([line[0].colour_key for line in lines.values()])):
        stats = np.array([mean_std([100 * run.metrics["test_acc"] for run in g.runs]) for g in line])
        seeds = sorted({len(g.runs) for g in line})
        label = name + (f" (n={'/'.join(map(str, seeds))})" if seeds != [1] else "")
        ax.errorbar([x(g) for g in line], stats[:, 0], yerr=stats[:, 1], markersize=5, capsize=3, label=label, **style)
    classes = len(next(iter(lines.values()))[0].class_names)
    ax.axhline(100 / classes, color="0.4", linestyle=(0, (1, 2)), linewidth=1.2, label=f"chance (1/{classes})")
    ticks = sorted({x(g) for line in lines.values() for g in line})
    ax.set_xscale("log")
    ax.set_xticks(ticks, [(f"{t:.0f}" if t >= 10 else f"{t:.2g}") if per_class else percent(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(f"{'labels per class' if per_class else 'label fraction'} (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Label efficiency: mean ± std over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def examples_figure(run: Run) -> Figure:
    """A grid of test images titled predicted (probability) / true class; wrong predictions framed in red."""
    short = short_class_names(run.class_names)
    fig = _figure((6.4, 7.0), class_legend(run.class_names))
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
    fig = _figure((side + 1, side), class_legend(names))
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


@contextlib.contextmanager
def literal_text(fig: Figure):
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


def _embed(stem: str, formats: Sequence[str]) -> str:
    """Markdown showing a figure: PNG or SVG inline, else a link to the PDF."""
    shown = next((fmt for fmt in ("png", "svg") if fmt in formats), None)
    name = Path(stem).name
    return f"![{name}]({stem}.{shown})" if shown else f"[{name} (PDF)]({stem}.pdf)"


def log_figures(run: Run, log_dir: Path) -> None:
    """The run's example grid and confusion matrix as TensorBoard images (Images tab) in log_dir."""
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        figures = {"report/qualitative": examples_figure(run), "report/confusion": confusion_figure([run], run.title)}
        for tag, fig in figures.items():
            with literal_text(fig):
                fig.canvas.draw()
            pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
            writer.add_image(tag, pixels, global_step=run.metrics["epochs"], dataformats="HWC")
    finally:
        writer.close()


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


# ----------------------------------------------------------------------------------------------
# Writing: options, staging dirs, markdown


def check_figure_options(formats: str | Sequence[str], dpi: int) -> tuple[str, ...]:
    """The formats as a tuple ("png,pdf" or ["png", "pdf"]), after checking them and dpi."""
    if isinstance(formats, str):
        formats = formats.split(",")
    chosen = tuple(dict.fromkeys(fmt.strip().lower().lstrip(".") for fmt in formats if fmt.strip()))
    if not chosen or not set(chosen) <= set(FORMATS):
        raise UserError(
            f"figure formats {','.join(formats)!r} are not all known: choose one or more of {', '.join(FORMATS)}, "
            "comma-separated (--formats png,pdf)."
        )
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 10 <= dpi <= 1200:
        raise UserError(f"dpi {dpi!r} is out of range: pass a whole number from 10 to 1200 (150 screen, 300 print).")
    return chosen


def _entries(path: Path) -> list[Path] | None:
    try:
        return list(path.iterdir())
    except OSError:
        return None


def _report_problem(path: Path) -> str | None:
    """Why the existing dir `path` may not be replaced by a report; None for an empty dir, a dir carrying
    MARKER (a report), or one holding only the files a report wrote before the marker existed."""
    entries = _entries(path)
    if entries is None:
        return f"{path} cannot be listed, so it cannot be checked to be an earlier report"
    if not entries or (path / MARKER).is_file():
        return None
    legacy = any(e.name == "results.md" for e in entries) and all(
        e.is_file() and not e.is_symlink() and LEGACY_REPORT_FILE.fullmatch(e.name) for e in entries
    )
    if legacy:
        return None
    return (
        f"{path} already exists and is not an sslpath report (it has no {MARKER} file); a report replaces its "
        "dir whole, so it is never written over other files"
    )


def _tensorboard_problem(path: Path) -> str | None:
    """Why a run's existing tb/report/ may not be replaced: it holds more than the event files a report writes."""
    entries = _entries(path)
    if entries is not None and all(e.is_file() and not e.is_symlink() and e.name.startswith(TB_EVENTS) for e in entries):
        return None
    return f"{path} holds other files than the TensorBoard images of an earlier report"


def check_out_dir(out: str | Path, run_dirs: Sequence[Path], tensorboard: bool) -> Path:
    """out as an absolute path (`.` and symlinks resolved), after checking that writing the report there,
    which replaces that dir whole, deletes nothing but an earlier report."""
    out = Path(out).expanduser().resolve()
    fix = "Pass a new or empty --out DIR, or an earlier report's dir (the default is report/ beside the runs)."
    if out.parent == out:
        raise UserError(f"--out {out} is the filesystem root, which a report dir cannot replace. {fix}")
    for run in map(Path.resolve, run_dirs):
        if out == run or run.is_relative_to(out):
            what = "is the run dir" if out == run else "holds the run dir"
            raise UserError(
                f"--out {out} {what} {run}: the report replaces its dir whole, so writing it there would delete "
                f"the run's files. {fix}"
            )
        if tensorboard and out.is_relative_to(run / "tb" / TB_REPORT):
            raise UserError(
                f"--out {out} is inside {run / 'tb' / TB_REPORT}, which the report rewrites with TensorBoard images. {fix}"
            )
    with contextlib.suppress(OSError):  # no current dir (deleted): nothing to protect
        if Path.cwd().resolve().is_relative_to(out):
            raise UserError(
                f"--out {out} is or holds the current dir: the report replaces its dir whole, which would leave "
                f"this shell in a deleted folder. {fix}"
            )
    if out.is_dir() and (problem := _report_problem(out)):
        raise UserError(f"{problem}. {fix}")
    return out


def _staging_dir(dest: Path, fix: str, problem: Callable[[Path], str | None] = _report_problem) -> Path:
    """An empty dir beside dest (so on its filesystem, to be renamed onto it), created with the umask's mode,
    once dest is known to be missing or a dir that may be replaced (`problem` says why not)."""
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} is a file, so no report dir can be written there. {fix}")
    if dest.is_dir() and (why := problem(dest)):
        raise UserError(f"{why}. {fix}")
    staged = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        staged.mkdir(parents=True)
    except OSError as err:
        raise UserError(f"cannot write {dest} ({err.strerror or err}). {fix}") from None
    return staged


def _replace_dir(staged: Path, dest: Path, problem: Callable[[Path], str | None] = _report_problem) -> None:
    """Rename staged to dest. An old dest (checked again by `problem`: only a report is ever moved) is moved
    aside first and deleted once staged is in place; if another process puts its own dest there in between
    (two reports of one run), it is replaced in turn."""
    aside = staged.with_name(staged.name + ".old")
    for _ in range(5):
        shutil.rmtree(aside, ignore_errors=True)
        if dest.is_dir() and (why := problem(dest)):
            raise UserError(f"{why}; it appeared while the report was written, so the report was not put there.")
        with contextlib.suppress(FileNotFoundError):
            dest.rename(aside)
        try:
            staged.rename(dest)
        except OSError:
            if dest.exists():
                continue
            with contextlib.suppress(OSError):
                aside.rename(dest)  # put the old one back
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return
    raise UserError(f"{dest} kept being replaced by another process while this report was written; run it again.")


def selection_sentence(groups: Sequence[Group]) -> str:
    """How the runs chose the checkpoint they were tested with (runs from before `selection`: best_val)."""
    chosen = sorted({run.metrics.get("selection", "best_val") for group in groups for run in group.runs})
    mixed = " (runs differ; each metrics.json names its `selection`)" if len(chosen) > 1 else ""
    return f"Test metrics of each run's checkpoint chosen by {' / '.join(SELECTION_TEXT[s] for s in chosen)}{mixed}."


def results_markdown(groups: Sequence[Group], stems: Sequence[str], efficiency: bool, formats: Sequence[str]) -> str:
    with_fraction = len({group.fraction for group in groups}) > 1
    parts = [
        "# Results\n",
        markdown_table(groups, COLUMNS),
        f"{selection_sentence(groups)} A row pools the n runs (seeds) "
        "that share a model name and a label fraction: mean ± sample std. Val kNN accuracy: weighted k-nearest-"
        "neighbour classification of validation images by the SSL backbone's features (— for other models). "
        "Wall time: training and testing, in minutes.\n",
    ]
    absent = sorted({name for g in groups for run in g.runs for name in run.metrics.get("absent_classes", [])})
    if absent:
        parts.append(f"Absent from the test split of some runs: {', '.join(absent)} (empty confusion-matrix rows).\n")
    parts += ["## Validation curves\n", " ".join(_embed(stem, formats) for stem in VAL_PLOTS) + "\n"]
    if any(group.kind in SSL_KINDS for group in groups):
        parts.append("An SSL model's validation accuracy is that of its online linear probe.\n")
    if efficiency:
        parts += ["## Label efficiency\n", _embed(LABEL_EFFICIENCY, formats) + "\n"]
    for group, stem in zip(groups, stems):
        figures = (_embed(f"{kind}_{stem}", formats) for kind in ("qualitative", "confusion"))
        parts += [f"## {group.label(with_fraction)}\n", " ".join(figures) + "\n"]
    runs = [f"- {run.title}: `{run.dir}`\n" for group in groups for run in group.runs]
    return "\n".join([*parts, "## Runs\n", "".join(runs)])


def _render_report(
    groups: Sequence[Group],
    out: Path,
    formats: Sequence[str],
    dpi: int,
    comparisons: PairedComparisons | None = None,
) -> None:
    atomic_write_text(out / MARKER, "Written by sslpath.report, which replaces this dir whole when run again.\n")
    for stem, (tag, ylabel, scale) in VAL_PLOTS.items():
        save_figure(curves_figure(groups, tag, ylabel, scale), out / stem, formats, dpi)
    efficiency = label_efficiency_figure(groups)
    if efficiency is not None:
        save_figure(efficiency, out / LABEL_EFFICIENCY, formats, dpi)
    stems = group_stems(groups)
    for group, stem in zip(groups, stems):
        save_figure(examples_figure(group.runs[0]), out / f"qualitative_{stem}", formats, dpi)
        save_figure(confusion_figure(group.runs, group.title), out / f"confusion_{stem}", formats, dpi)
    atomic_write_text(out / "results.csv", csv_table(groups, COLUMNS))
    markdown = results_markdown(groups, stems, efficiency is not None, formats)
    if comparisons is not None and comparisons.rows:  # issue 18: paired comparisons (sslpath.results.compare)
        atomic_write_text(out / "comparisons.csv", comparisons.csv())
        atomic_write_text(out / "comparisons.md", comparisons.markdown())
        markdown += "\n## Paired comparisons\n\n" + "\n".join(f"- {c.a} vs {c.b}: {c.verdict}" for c in comparisons.rows)
        markdown += "\n\nIntervals and McNemar's test: [comparisons.md](comparisons.md).\n"
    atomic_write_text(out / "results.md", markdown)


# ----------------------------------------------------------------------------------------------
# Entry points


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: Path,
    *,
    formats: str | Sequence[str] = ("png",),
    dpi: int = 150,
    tensorboard: bool = True,
    tensorboard_within: Path | None = None,
    compare: Sequence[str] = (),
    bootstrap: Bootstrap | None = None,
) -> Path:
    """Write the report for these runs (dirs are expanded as by find_run_dirs); returns results.md.

    With tensorboard, each run's tb/report/ is rewritten with its example grid and confusion matrix, so
    TensorBoard shows one image per tag however often the report is rebuilt; with tensorboard_within, only
    runs below that dir get them (a sweep leaves runs it merely reads alone). out_dir must be new, empty or
    an earlier report (check_out_dir). Every dir is filled beside its destination and renamed into place
    only once all are complete. comparisons.md/.csv pair the runs `compare` names (`A,B` each) or, by
    default, each model with the baseline tested on the same tiles (sslpath.results.compare).
    """
    formats = check_figure_options(formats, dpi)
    found = find_run_dirs(run_dirs)
    out_dir = check_out_dir(out_dir, found, tensorboard)
    groups = group_runs([load_run(d) for d in found])
    comparisons = paired_comparisons([run for group in groups for run in group.runs], compare, bootstrap or Bootstrap())
    within = None if tensorboard_within is None else Path(tensorboard_within).resolve()
    staged: dict[Path, Path] = {}  # destination -> temporary dir being filled
    try:
        fix = "Pass a writable --out DIR."
        staged[out_dir] = _staging_dir(out_dir, fix)
        try:
            _render_report(groups, staged[out_dir], formats, dpi, comparisons)
        except OSError as err:
            raise UserError(f"cannot write the report to {out_dir} ({err.strerror or err}). {fix}") from None
        if tensorboard:
            for run in (run for group in groups for run in group.runs):
                if within is not None and not run.dir.resolve().is_relative_to(within):
                    continue
                fix = f"Make {run.dir} writable, or leave the TensorBoard images out (--no-tensorboard)."
                dest = run.dir / "tb" / TB_REPORT
                tmp = staged[dest] = _staging_dir(dest, fix, _tensorboard_problem)
                try:
                    log_figures(run, tmp)
                except OSError as err:
                    raise UserError(f"cannot write images in {tmp} ({err.strerror or err}). {fix}") from None
    except BaseException:
        for tmp in staged.values():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        for dest, tmp in reversed(staged.items()):  # the report last: once it is in place, everything is
            _replace_dir(tmp, dest, _report_problem if dest == out_dir else _tensorboard_problem)
    finally:
        for tmp in staged.values():
            shutil.rmtree(tmp, ignore_errors=True)  # gone already when renamed into place
    return out_dir / "results.md"


def write_sweep_results(
    runs: Sequence[Run], sweep_dir: Path, report_dir: Path, *, formats: str | Sequence[str] = ("png",), dpi: int = 150
) -> Path:
    """sweep_results.md/.csv in sweep_dir (test accuracy and AUC per model and label fraction, mean ± std
    over seeds); the label-efficiency figure in report_dir when a model was run at several fractions."""
    formats = check_figure_options(formats, dpi)
    groups = group_runs(runs)
    figure = label_efficiency_figure(groups)
    parts = [
        "# Sweep results\n",
        markdown_table(groups, SWEEP_COLUMNS),
        f"{selection_sentence(groups)} Mean ± sample std over the n jobs (seeds) that share a model and a "
        "label fraction (`data.label_fraction`).\n",
    ]
    try:
        if figure is not None:
            save_figure(figure, report_dir / LABEL_EFFICIENCY, formats, dpi)
            link = os.path.relpath(report_dir / LABEL_EFFICIENCY, sweep_dir)
            parts += ["## Label efficiency\n", _embed(link, formats) + "\n"]
        atomic_write_text(sweep_dir / f"{SWEEP_RESULTS}.csv", csv_table(groups, SWEEP_COLUMNS))
        return atomic_write_text(sweep_dir / f"{SWEEP_RESULTS}.md", "\n".join(parts))
    except OSError as err:
        raise UserError(f"cannot write in {sweep_dir} ({err.strerror or err}); make it writable.") from None


def default_out_dir(run_dirs: Sequence[Path]) -> Path:
    """report/ in the run dir itself, or in the common parent of several."""
    return Path(os.path.commonpath([str(d) for d in run_dirs])) / REPORT_DIR


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="sslpath.report",
        description="Compare finished sslpath runs: results.md/.csv, validation curves, example grids, "
        "confusion matrices, label efficiency. A RUN_DIR holding metrics.json is one run; any other RUN_DIR "
        "gives every run dir below it (a sweep's jobs). --out must be new, empty or an earlier report: it is "
        "replaced whole.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, help="output dir (default: report/ under the runs' common parent)")
    parser.add_argument("--formats", default="png", help=f"comma-separated figure formats of {','.join(FORMATS)}; default png")
    parser.add_argument("--dpi", type=int, default=150, help="figure resolution (default 150; 300 for print)")
    parser.add_argument(
        "--no-tensorboard", dest="tensorboard", action="store_false", help="do not write images to each run's tb/report/"
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="A,B",
        help="paired comparison of the runs named A and B (run_name; matched by label fraction and seed); repeatable. "
        "Default: each model against the baseline",
    )
    parser.add_argument("--bootstrap-resamples", type=int, default=1000, help="paired-bootstrap resamples (default 1000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="paired-bootstrap seed (default 0)")
    parser.add_argument("--ci-level", type=float, default=0.95, help="interval level and 1 - significance (default 0.95)")
    args = parser.parse_args(argv)
    with exit_on_user_error("sslpath.report"):
        bootstrap = checked_bootstrap(args.bootstrap_resamples, args.bootstrap_seed, args.ci_level)
        run_dirs = find_run_dirs(args.run_dirs)
        out = args.out or default_out_dir(run_dirs)
        results = write_report(
            run_dirs, out, formats=args.formats, dpi=args.dpi, tensorboard=args.tensorboard, compare=args.compare,
            bootstrap=bootstrap,
        )  # fmt: skip
    print(f"sslpath.report: {len(run_dirs)} run(s) -> {results}")


if __name__ == "__main__":
    main()
