"""What a test pass leaves in a run dir besides metrics.json, written the same way by training
(`sslpath.training.callbacks.TestResults`) and by `sslpath.evaluate`, so `sslpath.report` reads both alike;
and the shared steps of the inference commands: checking where output goes, and running a model."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sslpath.core.errors import UserError
from sslpath.core.files import atomic_write_bytes, atomic_write_text
from sslpath.data.splits import Split

PREDICTIONS = "test_predictions.csv"
EXAMPLES = "test_examples.npz"


def write_predictions(dirpath: str | Path, probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> Path:
    """One row per test image: index, true label, predicted label, probability per class."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["index", "label", "pred"] + [f"p_{name}" for name in class_names])
    for i, (p, y) in enumerate(zip(probs, labels)):
        writer.writerow([i, int(y), int(p.argmax())] + [f"{v:.6f}" for v in p])
    return atomic_write_text(Path(dirpath) / PREDICTIONS, buf.getvalue())


def write_examples(dirpath: str | Path, split: Split, probs: np.ndarray, count: int = 36, seed: int = 0) -> Path:
    """A seeded handful of test images with labels and predictions, for the report's grids."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(split), generator=gen)[:count].sort().values
    buf = io.BytesIO()
    np.savez(
        buf,
        index=idx.numpy(),
        images=split.images[idx.to(split.images.device)].permute(0, 2, 3, 1).cpu().numpy(),  # N×H×W×3 RGB
        labels=split.labels[idx.to(split.labels.device)].cpu().numpy(),
        probs=probs[idx.numpy()],
    )
    return atomic_write_bytes(Path(dirpath) / EXAMPLES, buf.getvalue())


def check_writable(path: Path, setting: str) -> None:
    """Fail before any work, not after it, when nothing could be written at `path` (a file to write, or
    a folder to write in): the folder itself, or else its nearest existing ancestor, must be writable."""
    path = Path(path).expanduser().absolute()
    ancestor = path if path.is_dir() else next(p for p in path.parents if p.exists())
    if not ancestor.is_dir():
        raise UserError(
            f"{setting}={path} lies under {ancestor}, which is a file, not a folder. Pass a path in a writable folder."
        )
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise UserError(
            f"{setting}={path} cannot be written: {ancestor} is not writable ({err.strerror or err}). Pass a path "
            "in a folder you can write to."
        ) from None


def class_logits(model: nn.Module, transform: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Float logits (on the CPU) for a uint8 N×3×H×W batch, through the evaluation transform."""
    with torch.no_grad():
        return model(transform(images.to(device))).float().cpu()
