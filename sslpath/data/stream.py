"""`data=stream`: a training pool read from shards (sslpath.data.shards) by DataLoader workers, a batch at a time.

Only the training split streams; validation and test are read into memory as with every other source (they
are evaluation sets, small beside a pretraining pool). Batches arrive as uint8 B×3×S×S tiles like BatchLoader's,
so the on-device augmentation of ArrayDataModule (`on_after_batch_transfer`) is the same. Order: the same
(seed, epoch) permutation and disjoint rank shares as BatchLoader (sslpath.data.loader.rank_order). The loader's
`state_dict` (epoch and batches served) lets a run resumed in the middle of an epoch serve only that epoch's
remaining batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sslpath.core.errors import UserError
from sslpath.data.datamodule import ArrayDataModule
from sslpath.data.loader import rank_order, training_batches
from sslpath.data.shards import REPREPARE, ShardSet, ShardSplit
from sslpath.data.splits import SPLITS, Split

log = logging.getLogger(__name__)


class ShardBatches(Dataset):
    """Item i of a list of index arrays: that batch's tiles and labels (a worker reads whole batches)."""

    def __init__(self, split: ShardSplit, batches: list[np.ndarray]) -> None:
        self.split, self.batches = split, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | tuple[str, str]:
        try:
            return self.split.read(self.batches[i])
        except UserError as err:  # a worker's exception reaches the trainer wrapped in its traceback: pass the text
            return ("error", str(err))


class StreamLoader:
    """Training batches of a shard split for this rank; `num_workers` processes read ahead of the model."""

    def __init__(
        self,
        split: ShardSplit,
        batch_size: int,
        seed: int = 0,
        epoch: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
    ) -> None:
        self.split, self.seed, self.epoch, self.rank, self.world_size = split, seed, epoch, rank, world_size
        self.num_workers, self.prefetch_factor, self.pin_memory = num_workers, prefetch_factor, pin_memory
        self.per_rank = len(split) // world_size
        self.batch_size = min(batch_size, self.per_rank)
        if self.batch_size < batch_size:
            log.warning("training shards have %d tiles per rank: batch size %d -> %d", self.per_rank, batch_size, self.batch_size)
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches already served) from a checkpoint
        self.served = 0
        self.current_epoch = 0

    def __len__(self) -> int:
        return training_batches(len(self.split), self.batch_size, self.world_size)

    def batches(self, epoch: int) -> list[np.ndarray]:
        order, _ = rank_order(len(self.split), self.per_rank, True, self.seed, epoch, self.rank, self.world_size)
        order = order.numpy()
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(len(self))]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.current_epoch = epoch = self.epoch()
        skip = self.resume_at[1] if self.resume_at is not None and self.resume_at[0] == epoch else 0
        self.resume_at = None
        self.served = skip
        loader = DataLoader(
            ShardBatches(self.split, self.batches(epoch)[skip:]),
            batch_size=None,  # items are whole batches
            shuffle=False,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )
        for batch in loader:
            if isinstance(batch[0], str):
                raise UserError(batch[1])
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where this epoch stands (Lightning stores it in checkpoints for loaders that have one)."""
        return {"epoch": self.current_epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, served = state.get("epoch"), state.get("served")
        if type(epoch) is not int or type(served) is not int or not 0 <= served <= len(self):
            raise UserError(
                f"the checkpoint's data=stream position {state!r} is not (epoch, batches served) of these shards. {REPREPARE}"
            )
        self.resume_at = (epoch, served)


class StreamDataModule(ArrayDataModule):
    """Training tiles streamed from the shard dir `dir` (written by `python -m sslpath.prepare`); its val and test
    splits in memory. `size` and `num_classes` must match the shards' (a clear error otherwise)."""

    def __init__(
        self,
        dir: str,
        size: int = 28,
        num_classes: int | None = None,
        num_workers: int = 2,
        prefetch_factor: int = 2,
        **kwargs: Any,
    ) -> None:
        self.shards = ShardSet(dir)
        where = f"data.dir={self.shards.root}"
        if self.shards.size != size:
            raise UserError(
                f"{where} holds {self.shards.size} px tiles but data.size={size}; set data.size={self.shards.size}"
                f" or prepare shards at {size} px."
            )
        found = self.shards.num_classes
        if found is None:
            raise UserError(
                f"{where} holds no labelled split (an unlabelled pool alone); "
                "prepare it with --eval-npz FILE for the val and test splits."
            )
        if num_classes not in (None, found):
            raise UserError(
                f"data.num_classes={num_classes} but {where} was prepared with {found} classes; set "
                f"data.num_classes={found} or null."
            )
        missing = [s for s in SPLITS if s not in self.shards.splits()]
        if missing:
            raise UserError(
                f"{where} has no {' or '.join(missing)} split; prepare it from an npz with all splits, or add --eval-npz FILE."
            )
        super().__init__(num_classes=found, **kwargs)
        if self.label_fraction != 1 or self.val_label_fraction != 1 or self.stain_norm != "none":
            raise UserError(
                "data=stream trains on every tile of its shards: set data.label_fraction=1 and "
                "data.stain_norm=none (label subsets and stain fitting need the whole split in memory)."
            )
        self.size, self.num_workers, self.prefetch_factor = size, num_workers, prefetch_factor
        self.train = self.shards.split("train")
        self.train_labels: torch.Tensor | None = None

    @property
    def class_names(self) -> list[str]:
        return self.shards.class_names or super().class_names

    def data_digest(self) -> str:
        """The index's digest (not the tiles' bytes: hashing a pool larger than memory each run costs a full read)."""
        return self.shards.digest

    @property
    def train_labels_per_class(self) -> float:
        if self.train_labels is None:
            raise RuntimeError("setup() must run first")
        return float((self.train_labels >= 0).sum()) / self.num_classes

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        self.train_labels = self.train.all_labels()
        unlabelled = int((self.train_labels < 0).sum())
        if unlabelled and not self.keep_unlabelled:
            raise UserError(
                f"data.dir={self.shards.root}: {unlabelled} training tiles are unlabelled, which only SSL pretraining "
                "uses; prepare labelled shards (class folders or an npz) for a supervised run."
            )
        self.labelled_train_size = len(self.train_labels) - unlabelled
        evaluation = {name: self._in_memory(self.shards.split(name)) for name in ("val", "test")}
        # The training entry holds labels only: its tiles stream, and nothing indexes them in memory.
        streamed = Split(torch.empty(0, 3, self.size, self.size, dtype=torch.uint8), self.train_labels)
        self.splits = self._place({"train": streamed} | evaluation)

    def labelled_tiles(self, split: str, chunk: int = 4096) -> Iterator[torch.Tensor]:
        """The training split's labelled tiles are read from the shards a chunk at a time."""
        if split != "train":
            yield from super().labelled_tiles(split)
            return
        labelled = torch.nonzero(self.train_labels >= 0).flatten().numpy()
        for start in range(0, len(labelled), chunk):
            yield self.train.read(labelled[start : start + chunk])[0]

    def _in_memory(self, split: ShardSplit, chunk: int = 4096) -> Split:
        parts = [split.read(np.arange(i, min(i + chunk, len(split)))) for i in range(0, len(split), chunk)]
        return Split(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))

    def training_batches(self, images: int) -> int:
        return training_batches(images, self.batch_size, self.trainer.world_size if self.trainer is not None else 1)

    def train_dataloader(self) -> StreamLoader:
        if self.splits is None:
            raise RuntimeError("setup() must run before batches are served")
        trainer = self.trainer
        loader = StreamLoader(
            self.train,
            self.batch_size,
            seed=self.seed,
            epoch=(lambda: trainer.current_epoch) if trainer is not None else (lambda: 0),
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor,
            pin_memory=self.pin_memory or (trainer is not None and trainer.strategy.root_device.type == "cuda"),
        )
        if trainer is not None and len(loader) < trainer.log_every_n_steps:
            trainer.log_every_n_steps = max(1, len(loader))
        return loader
