"""Finished runs read back and checked: metrics.json, test_predictions.csv, test_examples.npz and the
validation curves in tb/, each file against the others.

A report reads only what a run dir holds after testing (written alike by sslpath.train and sslpath.evaluate),
so it can be rebuilt at any time without checkpoints or a GPU. Every file is untrusted: read as plain data,
its sizes checked before loading, and refused in one paragraph naming the file and the fix.
"""

from __future__ import annotations

import csv
import math
import reprlib
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sslpath.core.errors import UserError
from sslpath.core.paths import find_results
from sslpath.reporting.style import percent
from sslpath.results.metrics import classification_results
from sslpath.results.record import MAX_EPOCHS, RERUN, RunRecord, read_record
from sslpath.results.sources import DataSource, data_source

RUN_FILES = ("metrics.json", "test_predictions.csv", "test_examples.npz")
GRID = 3  # the qualitative figure shows GRID × GRID test images
VAL_TAGS = ("val/acc", "val/loss")  # the validation curves read from tb/
# test_examples.npz holds a handful of tiles for the grid (36 by default): larger declared arrays are refused
MAX_EXAMPLES, MAX_EXAMPLE_SIDE, MAX_EXAMPLE_BYTES = 10_000, 1024, 256 * 2**20
AUC_SLACK = 1.5e-6  # test_predictions.csv rounds probabilities to 6 decimals: pairs this close may be either order


class Examples(NamedTuple):
    """The first GRID × GRID images of test_examples.npz with their labels and class probabilities."""

    images: np.ndarray  # uint8 N×H×W×3
    labels: np.ndarray  # int N
    probs: np.ndarray  # float N×C


@dataclass
class Run:
    """One finished run, checked: its record, test labels, predictions and probabilities, example images, validation curves."""

    dir: Path
    record: RunRecord
    class_names: list[str]
    labels: np.ndarray
    preds: np.ndarray
    probs: np.ndarray  # float N×C, test_predictions.csv's (6 decimals)
    examples: Examples
    curves: dict[str, dict[int, float]]  # TensorBoard tag -> {epoch (1-based): value}

    @property
    def name(self) -> str:
        return self.record.run_name

    @property
    def kind(self) -> str:
        return self.record.model.lower()

    @property
    def colour_key(self) -> str:
        """Fine-tunes and probes take their SSL method's colour, so methods stay apart in one figure."""
        return (self.record.pretrain_method or self.kind).lower()

    @property
    def fraction(self) -> float:
        return float(self.record.label_fraction)

    @property
    def source(self) -> DataSource:
        """Where its test tiles came from: its own test split, or the data an evaluation named."""
        return data_source(self.record)

    @property
    def title(self) -> str:
        """What a reader needs (model, data unless its own test split, labels, seed), not dir names or hashes."""
        data = "" if self.source.own else f" · {self.source.label}"
        return f"{self.name}{data} · {percent(self.fraction)} labels · seed {self.record.seed}"


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """The run dirs the paths name (sslpath.core.paths.find_results): a dir holding metrics.json is that one
    run; any other dir gives every run dir below it (a sweep dir, a chained run stopped after its SSL stage)."""

    def nothing(path: Path) -> str:
        return (
            "there is no finished run to report. Pass run dirs written by sslpath.train (outputs/runs/<time>_<name>, "
            "or a multirun sweep dir). A run dir without metrics.json stopped before testing: finish it with "
            f"`python -m sslpath.train ckpt_path=last hydra.run.dir={path}` (plus its original overrides), or leave it out."
        )

    return [file.parent for file in find_results(paths, RUN_FILES[0], nothing)]


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
    record = read_record(run_dir / RUN_FILES[0])
    class_names, labels, preds, probs = read_predictions(run_dir / RUN_FILES[1])
    check_consistency(run_dir, record, class_names, labels, preds)
    check_auc(run_dir, record, class_names, labels, probs)
    return Run(
        dir=run_dir,
        record=record,
        class_names=class_names,
        labels=labels,
        preds=preds,
        probs=probs,
        examples=read_examples(run_dir / "test_examples.npz", len(class_names)),
        curves=read_val_curves(run_dir / "tb"),
    )


def _invalid(path: Path, problem: str) -> UserError:
    return UserError(f"{path} {problem}. {RERUN}")


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


def check_consistency(run_dir: Path, record: RunRecord, class_names: list[str], labels: np.ndarray, preds: np.ndarray) -> None:
    """metrics.json must describe these predictions: the same classes, and the accuracy they give.

    An edited or stale metrics.json would otherwise put numbers in the report that no prediction supports.
    """
    path = run_dir / "metrics.json"
    per_class = list(record.per_class_acc)
    if sorted(per_class) != sorted(class_names):
        raise _invalid(
            path,
            f"has per_class_acc for {len(per_class)} classes ({reprlib.repr(per_class)}), but "
            f"test_predictions.csv has {len(class_names)} ({reprlib.repr(class_names)}): the two files come "
            "from different runs or datasets",
        )
    absent = record.absent_classes
    present = {class_names[i] for i in np.unique(labels)}
    if wrong := [name for name in absent if name not in class_names or name in present]:
        raise _invalid(path, f"lists {reprlib.repr(wrong)} in absent_classes: test_predictions.csv has images of them")
    correct = int((labels == preds).sum())
    if abs(correct / len(labels) - record.test_acc) > 1e-6:
        raise UserError(
            f"run {record.run_name!r} ({run_dir}): metrics.json says test_acc = {record.test_acc:.6f}, but "
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


def check_auc(run_dir: Path, record: RunRecord, class_names: list[str], labels: np.ndarray, probs: np.ndarray) -> None:
    """metrics.json's test_auc must be the macro AUC (sslpath.results.metrics.classification_results) of the predictions."""
    claimed = record.test_auc
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
        f"run {record.run_name!r} ({run_dir}): metrics.json says test_auc = {says}, but the probabilities in "
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
        tag: {epoch_at[e.step] + 1: e.value for e in events.Scalars(tag) if e.step in epoch_at} for tag in VAL_TAGS if tag in tags
    }
