"""Splits as whole uint8 tensors, and stratified, seeded selections: the label subsets of
label-efficiency runs and the cuts of scripts/make_sample.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sslpath.core.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    images: torch.Tensor  # uint8, N×C×H×W
    labels: torch.Tensor  # int64, N; -1 marks an image whose label is withheld

    def __len__(self) -> int:
        return len(self.labels)


def stratified_subset(labels: torch.Tensor, fraction: float, num_classes: int, seed: int) -> torch.Tensor:
    """Indices of a per-class share of the labels, at least one per class, chosen by seed."""
    if not 0 < fraction <= 1:
        raise UserError(f"data.label_fraction={fraction} is outside (0, 1]; use e.g. 0.01, 0.1 or 1.0.")
    if fraction == 1:
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        k = round(fraction * len(idx))
        if len(idx) and k == 0:
            raise UserError(
                f"data.label_fraction={fraction} keeps no label of class {c} ({len(idx)} training "
                f"images); raise it to at least {1 / len(idx):.4g} so every class keeps one label."
            )
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    return torch.cat(keep).sort().values


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation in which every contiguous run holds each class in its overall share.

    Each class is spread evenly along the sequence (its k-th image, in random order, sits at
    position (k + u) / n_class, u random per class), so cutting the permutation into consecutive
    pieces of any sizes gives stratified splits of exactly those sizes: per class within two
    images of proportional.
    """
    rng = np.random.default_rng(seed)
    position = np.empty(len(labels))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        position[rng.permutation(idx)] = (np.arange(len(idx)) + rng.uniform()) / len(idx)
    return np.lexsort((rng.random(len(labels)), position))  # ties between classes broken at random
