"""Frozen-feature evaluation of a backbone: features of clean images in eval mode, then a weighted
kNN and a linear probe trained to convergence on them, both fitted on the labelled training images
only. SSL runs end with it (`frozen_*` keys in metrics.json, beside the online probe's
`test_acc`), because the online probe lags the features on short runs.

The linear probe is multinomial logistic regression on standardised features, fitted full-batch
with L-BFGS for each L2 strength in a grid; the strength is chosen by validation accuracy and the
test accuracy reported for it (the protocol of SimCLR's and solo-learn's linear evaluation on
cached features, in closed form instead of SGD epochs).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslpath.models.knn import WeightedKNN

log = logging.getLogger(__name__)
# Up to this many feature values the probe is fitted on one CPU thread: L-BFGS on cached features is
# thousands of small operations, and thread-pool hand-offs cost more than they save (701×512
# PathMNIST sample features: 10× faster on one thread of a 2-core machine).
SINGLE_THREAD_MAX = 2**20


@dataclass(frozen=True)
class FrozenEvalSettings:
    """`frozen_eval` in conf/train.yaml."""

    enabled: bool = True
    knn_k: int = 20  # as the kNN monitor (solo-learn's WeightedKNNClassifier defaults)
    knn_temperature: float = 0.07
    l2: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # penalty λ/2·‖W‖² beside the mean cross-entropy
    max_iter: int = 1000  # L-BFGS iterations per strength
    batch_size: int = 1024  # images per forward pass when extracting features


@torch.no_grad()
def extract(
    backbone: nn.Module, images: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor], batch_size: int
) -> torch.Tensor:
    """fp32 features of `images` (uint8 N×C×H×W) after `transform` (the evaluation transform:
    normalised, never augmented), with the backbone in eval mode (BatchNorm running statistics)."""
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        return torch.cat([backbone(transform(chunk.to(device))).float().cpu() for chunk in images.split(batch_size)])
    finally:
        backbone.train(was_training)


def extract_splits(
    backbone: nn.Module, datamodule: Any, batch_size: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Features and labels of the labelled images of train, val and test (unlabelled ones, -1, left out)."""
    feats, labels = {}, {}
    for name in ("train", "val", "test"):
        chunks = [extract(backbone, tiles, datamodule.transform, batch_size) for tiles in datamodule.labelled_tiles(name)]
        feats[name] = torch.cat(chunks) if chunks else torch.empty(0)
        labels[name] = datamodule.labelled_labels(name)
    return feats, labels


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    feats: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int,
) -> float:
    """Weighted kNN accuracy of `feats` voted by `bank` (the kNN monitor's metric, on frozen features).
    Local to this process: under DDP only rank 0 evaluates, so the metric must not wait for the others."""
    knn = WeightedKNN(k, temperature, num_classes, sync_on_compute=False)
    knn.update(train_feats=bank, train_labels=bank_labels, test_feats=feats, test_labels=labels)
    return float(knn.compute())


def fit_linear(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float, max_iter: int, start: nn.Linear | None = None
) -> nn.Linear:
    """Multinomial logistic regression on `feats` (already standardised): mean cross-entropy +
    l2/2·‖W‖² (bias unpenalised), minimised full-batch by L-BFGS with a strong-Wolfe line search from
    `start` (a neighbouring strength's solution) or zero weights. The objective is strictly convex:
    the same optimum from any start, a nearby one only gets there in fewer iterations."""
    linear = nn.Linear(feats.shape[1], num_classes).double()
    with torch.no_grad():
        linear.weight.copy_(start.weight if start is not None else torch.zeros_like(linear.weight))
        linear.bias.copy_(start.bias if start is not None else torch.zeros_like(linear.bias))
    x, y = feats.double(), labels
    optimizer = torch.optim.LBFGS(
        linear.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), y) + l2 / 2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear


@contextlib.contextmanager
def threads_for(feats: torch.Tensor) -> Iterator[None]:
    before = torch.get_num_threads()
    if feats.numel() <= SINGLE_THREAD_MAX:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Probe:
    """A fitted linear probe: the training features' standardisation, the L2 strength chosen on
    validation, and its validation accuracy."""

    mean: torch.Tensor
    std: torch.Tensor
    linear: nn.Linear
    l2: float
    val_acc: float

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.linear(((feats - self.mean) / self.std).double())

    def accuracy(self, feats: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.logits(feats).argmax(1) == labels).double().mean())


def fit_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    l2_grid: Sequence[float],
    max_iter: int,
) -> Probe:
    """Fit on train for each L2 strength, keep the best by validation accuracy (ties: the stronger
    penalty). Features are standardised by the training mean/std."""
    mean, std = train[0].mean(0), train[0].std(0).nan_to_num(1.0).clamp_min(1e-6)  # std of one image: nan
    best: Probe | None = None
    linear = None
    for l2 in sorted(l2_grid, reverse=True):  # strongest first, each started from the previous solution
        with threads_for(train[0]):
            linear = fit_linear((train[0] - mean) / std, train[1], num_classes, l2, max_iter, start=linear)
        probe = Probe(mean, std, linear, l2, 0.0)
        val_acc = probe.accuracy(*val)
        if best is None or val_acc > best.val_acc:
            best = Probe(mean, std, linear, l2, val_acc)
    assert best is not None  # l2_grid is checked non-empty
    return best


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    l2_grid: Sequence[float],
    max_iter: int,
) -> dict[str, float]:
    """`fit_probe`'s accuracies on test, validation and train."""
    probe = fit_probe(train, val, num_classes, l2_grid, max_iter)
    return {
        "frozen_linear_acc": probe.accuracy(*test),
        "frozen_linear_val_acc": probe.val_acc,
        "frozen_linear_train_acc": probe.accuracy(*train),
        "frozen_linear_l2": probe.l2,
    }


def frozen_evaluation(backbone: nn.Module, datamodule: Any, settings: FrozenEvalSettings) -> dict[str, Any]:
    """kNN and linear-probe accuracies of `backbone`'s frozen features on the datamodule's splits:
    fitted on the labelled training images (unlabelled ones, -1, are left out), the L2 strength
    chosen on validation, accuracies on validation and test."""
    if not settings.l2:
        raise ValueError("frozen_eval.l2 needs at least one strength")
    feats, labels = extract_splits(backbone, datamodule, settings.batch_size)
    num_classes = datamodule.num_classes
    knn = {
        f"frozen_knn{suffix}": knn_accuracy(
            feats["train"], labels["train"], feats[name], labels[name], settings.knn_k, settings.knn_temperature, num_classes
        )
        for name, suffix in (("test", "_acc"), ("val", "_val_acc"))
    }
    linear = linear_probe(
        (feats["train"], labels["train"]),
        (feats["val"], labels["val"]),
        (feats["test"], labels["test"]),
        num_classes,
        settings.l2,
        settings.max_iter,
    )
    record = {**knn, **linear, "frozen_train_images": len(labels["train"])}
    log.info(
        "frozen features: kNN test acc %.4f, linear probe test acc %.4f (L2 %g, val acc %.4f) on %d labelled training images",
        record["frozen_knn_acc"],
        record["frozen_linear_acc"],
        record["frozen_linear_l2"],
        record["frozen_linear_val_acc"],
        record["frozen_train_images"],
    )
    return record
