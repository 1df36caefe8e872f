"""The kNN monitor of SSL runs: weighted kNN accuracy on features, pooled across ranks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric


class WeightedKNN(Metric):
    """Weighted kNN accuracy (Wu et al. 2018, as solo-learn's WeightedKNNClassifier).

    Training features and validation features are collected during an epoch (states are
    concatenated across ranks, so the accuracy pools every rank's counts); `compute` votes each
    validation feature's k most similar training features, weighted by exp(similarity / T).
    """

    full_state_update = False

    def __init__(self, k: int = 20, temperature: float = 0.07, num_classes: int = 2, chunk: int = 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # torchmetrics' options, e.g. sync_on_compute
        self.k, self.temperature, self.num_classes, self.chunk = k, temperature, num_classes, chunk
        for name in ("train_feats", "train_labels", "test_feats", "test_labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        train_feats: torch.Tensor | None = None,
        train_labels: torch.Tensor | None = None,
        test_feats: torch.Tensor | None = None,
        test_labels: torch.Tensor | None = None,
    ) -> None:
        if train_feats is not None:
            keep = train_labels >= 0  # unlabelled (-1) images vote for nothing
            self.train_feats.append(F.normalize(train_feats[keep].detach().float(), dim=1))
            self.train_labels.append(train_labels[keep])
        if test_feats is not None:
            keep = test_labels >= 0  # evaluation padding under DDP
            self.test_feats.append(F.normalize(test_feats[keep].detach().float(), dim=1))
            self.test_labels.append(test_labels[keep])

    @property
    def ready(self) -> bool:
        """Both sides collected something this epoch (on this rank)."""
        return bool(self.train_feats) and bool(self.test_feats)

    def compute(self) -> torch.Tensor:
        def cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
            return torch.cat(state) if isinstance(state, list) else state

        bank, bank_labels = cat(self.train_feats), cat(self.train_labels)
        feats, labels = cat(self.test_feats), cat(self.test_labels)
        correct = 0
        for start in range(0, len(feats), self.chunk):
            block = feats[start : start + self.chunk]
            (votes,) = weighted_votes(bank, bank_labels, block, (self.k,), self.temperature, self.num_classes)
            correct += int((votes.argmax(dim=1) == labels[start : start + self.chunk]).sum())
        return torch.tensor(correct / max(1, len(labels)))


def weighted_votes(
    bank: torch.Tensor, bank_labels: torch.Tensor, feats: torch.Tensor, ks: tuple[int, ...], temperature: float, num_classes: int
) -> list[torch.Tensor]:
    """Per k in `ks`: each row of `feats`' class votes from its k most similar rows of `bank` (both
    L2-normalised), each weighted by exp(similarity / T). One top-k search serves every k."""
    sim = feats @ bank.T
    top_sim, top_idx = sim.topk(min(max(ks), bank.shape[0]), dim=1)
    weights, labels = (top_sim / temperature).exp(), bank_labels[top_idx]
    votes = []
    for k in ks:
        v = torch.zeros(sim.shape[0], num_classes, device=sim.device, dtype=weights.dtype)
        votes.append(v.scatter_add_(1, labels[:, :k], weights[:, :k]))
    return votes
