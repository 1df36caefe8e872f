"""Calibration: does a 0.9 confidence mean 90 % right? Expected calibration error, reliability-diagram
data and figure, and temperature scaling fitted on validation logits (docs/evidence.md).

The ECE bins the top-class confidence as torchmetrics' `MulticlassCalibrationError(norm="l1")` does:
bins [k/B, (k+1)/B) for k = 0 … B-1, plus one more bin for a confidence of exactly 1.0 (a float32 softmax
often reaches it); ECE = Σ_bins (tiles in bin / all tiles) · |accuracy in bin − mean confidence in bin|.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: its edges, tile count, mean confidence and accuracy (NaN for an empty bin).
    The last bin holds only confidences of exactly 1.0 (lower == upper == 1)."""

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        share = self.count / self.count.sum()
        gap = np.abs(np.nan_to_num(self.accuracy) - np.nan_to_num(self.confidence))
        return float((share * gap).sum())

    def rows(self) -> list[dict[str, float | int | None]]:
        """Plain rows for a table or JSON (None where a bin is empty)."""
        nan = lambda v: None if np.isnan(v) else float(v)  # noqa: E731
        return [
            {"lower": float(lo), "upper": float(hi), "count": int(n), "confidence": nan(c), "accuracy": nan(a)}
            for lo, hi, n, c, a in zip(self.lower, self.upper, self.count, self.confidence, self.accuracy)
        ]


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int) -> Reliability:
    """Bin the tiles by top-class probability; per bin, its mean confidence and its accuracy."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError(f"probs of shape {probs.shape} do not match {len(labels)} labels")
    if not (isinstance(bins, int) and bins >= 1):
        raise ValueError(f"bins={bins!r} must be a positive integer")
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.searchsorted(edges, confidence, side="right") - 1  # [edge_k, edge_k+1); 1.0 -> its own bin `bins`
    count = np.bincount(index, minlength=bins + 1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, confidence, minlength=bins + 1) / count
        accuracy = np.bincount(index, correct, minlength=bins + 1) / count
    return Reliability(np.r_[edges[:-1], 1.0], np.r_[edges[1:], 1.0], count.astype(int), mean_conf, accuracy)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int) -> float:
    return reliability(labels, probs, bins).ece


def reliability_figure(curves: dict[str, Reliability], title: str = "Reliability diagram") -> Figure:
    """Accuracy against confidence per bin, one line per model (the diagonal is perfect calibration), with
    the share of tiles per bin below. Matplotlib's object API (Agg): no global pyplot state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="perfect calibration")
    width = 1.0 / max(len(curves), 1)
    for i, (name, rel) in enumerate(curves.items()):
        filled = rel.count > 0
        centre = np.where(rel.upper > rel.lower, (rel.lower + rel.upper) / 2, 1.0)
        top.plot(rel.confidence[filled], rel.accuracy[filled], marker="o", label=f"{name} (ECE {rel.ece:.3f})")
        step = (rel.upper - rel.lower).max()
        bottom.bar(centre + (i - (len(curves) - 1) / 2) * step * width, rel.count / rel.count.sum(), width=step * width)
    top.set(ylabel="accuracy in bin", xlim=(0, 1.02), ylim=(0, 1.02), title=title)
    top.legend(loc="upper left", fontsize="small")
    bottom.set(xlabel="confidence (top-class probability)", ylabel="share of tiles")
    return fig


@dataclass(frozen=True)
class TemperatureFit:
    """Temperature scaling (Guo et al., 2017): logits / T, T > 0 fitted on validation by NLL."""

    temperature: float
    val_nll_before: float
    val_nll_after: float


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> TemperatureFit:
    """Minimise the validation NLL of softmax(logits / T) over log T with L-BFGS (strong-Wolfe line search),
    so T stays positive. Accuracy is unchanged: dividing by T keeps every argmax."""
    import torch
    import torch.nn.functional as F

    logits, labels = logits.detach().double(), labels.detach().long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    before = float(F.cross_entropy(logits, labels))
    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    return TemperatureFit(temperature, before, float(F.cross_entropy(logits / temperature, labels)))


def temperature_report(
    val_logits: torch.Tensor, val_labels: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, bins: int
) -> dict[str, float | int | str]:
    """Temperature fitted on validation logits and what it does to the evaluated split: NLL and ECE before
    and after (accuracy is unchanged), for metrics.json's `temperature_scaling`."""
    import torch.nn.functional as F

    fit = fit_temperature(val_logits, val_labels)
    logits, y = logits.detach().double(), labels.detach().long()
    ece = [expected_calibration_error(y.numpy(), (logits / t).softmax(dim=1).numpy(), bins) for t in (1.0, fit.temperature)]
    return {
        "temperature": fit.temperature,
        "fitted_on": "val",
        "val_tiles": len(val_labels),
        "val_nll_before": fit.val_nll_before,
        "val_nll_after": fit.val_nll_after,
        "nll_before": float(F.cross_entropy(logits, y)),
        "nll_after": float(F.cross_entropy(logits / fit.temperature, y)),
        "ece_before": ece[0],
        "ece_after": ece[1],
    }
