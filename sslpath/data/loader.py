"""Batches by indexing whole-split tensors: one gather per batch, no workers, no collation.

At 28 px PathMNIST is ~250 MB, so per-image Python and worker processes would cost more than the
model; a split lives as one uint8 tensor (on the training device when it fits).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator

import torch

from sslpath.data.splits import Split

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, ...]  # a split's images (or views), then its labels
PAD_LABEL = -1  # evaluation padding under DDP: metrics ignore it, so no image counts twice


def training_batches(n: int, batch_size: int, world_size: int = 1) -> int:
    """Training batches per epoch of n images: equal shares per rank, the ragged last batch dropped."""
    per_rank = n // world_size
    return per_rank // min(batch_size, per_rank) if per_rank else 0


def rank_order(
    n: int, per_rank: int, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's image indices and label positions, in order (sslpath.data.stream serves shards by them too).

    Training: a disjoint share of one (seed, epoch) permutation of the n images. Evaluation: positions n, n+1, …
    are padding that repeat the first images; their label positions point past the labels (label -1).
    """
    if shuffle:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        image_idx = torch.randperm(n, generator=gen)[: per_rank * world_size]
        label_idx = image_idx
    else:
        pad = per_rank * world_size - n
        image_idx = torch.cat([torch.arange(n), torch.arange(pad)])
        label_idx = torch.arange(n + pad)
    return image_idx[rank::world_size], label_idx[rank::world_size]


class BatchLoader:
    """Under DDP each rank takes an equal, disjoint share of a shared permutation. Evaluation pads
    the shares to equal length like DistributedSampler, but marks the padding with label -1, so
    metrics skip it. Shuffling is seeded by (seed, epoch): a resumed run sees the same order as an
    uninterrupted one.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
    ) -> None:
        self.split, self.shuffle, self.seed, self.epoch = split, shuffle, seed, epoch
        self.rank, self.world_size, self.pin_memory = rank, world_size, pin_memory
        n = len(split)
        # Training drops the ragged last batch (BatchNorm and contrastive losses need full batches);
        # evaluation keeps every image.
        self.per_rank = n // world_size if shuffle else math.ceil(n / world_size)
        self.batch_size = min(batch_size, self.per_rank) if shuffle else batch_size
        if shuffle and self.batch_size < batch_size:
            log.warning("training split has %d images per rank: batch size %d -> %d", n, batch_size, self.batch_size)

    def __len__(self) -> int:
        if self.shuffle:
            return training_batches(len(self.split), self.batch_size, self.world_size)
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        labels = self.split.labels
        image_idx, label_idx = rank_order(
            len(self.split), self.per_rank, self.shuffle, self.seed, self.epoch(), self.rank, self.world_size
        )
        if not self.shuffle:
            labels = torch.cat([labels, labels.new_full((len(label_idx) * self.world_size - len(labels),), PAD_LABEL)])
        image_idx, label_idx = image_idx.to(self.split.images.device), label_idx.to(labels.device)
        for i in range(len(self)):
            batch = slice(i * self.batch_size, (i + 1) * self.batch_size)
            images, batch_labels = self.split.images[image_idx[batch]], labels[label_idx[batch]]
            if self.pin_memory:
                images, batch_labels = images.pin_memory(), batch_labels.pin_memory()
            yield images, batch_labels
