"""What a test pass leaves in a run dir besides metrics.json, written the same way by training
(`sslpath.training.callbacks.TestResults`) and by `sslpath.evaluation.evaluate`, so a report reads both
alike; and the one way the inference commands run a model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sslpath.core.files import atomic_write_bytes, atomic_write_text, csv_text
from sslpath.data.splits import Split

PREDICTIONS = "test_predictions.csv"
EXAMPLES = "test_examples.npz"


def write_test_predictions(dirpath: str | Path, probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> Path:
    """One row per test image: index, true label, predicted label, probability per class."""
    rows = [["index", "label", "pred"] + [f"p_{name}" for name in class_names]]
    rows += [[i, int(y), int(p.argmax())] + [f"{v:.6f}" for v in p] for i, (p, y) in enumerate(zip(probs, labels))]
    return atomic_write_text(Path(dirpath) / PREDICTIONS, csv_text(rows))


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


def class_logits(model: nn.Module, transform: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Float logits (on the CPU) for a uint8 N×3×H×W batch, through the evaluation transform."""
    with torch.no_grad():
        return model(transform(images.to(device))).float().cpu()
