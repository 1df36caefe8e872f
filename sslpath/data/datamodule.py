"""LightningDataModules: splits held as tensors, served by BatchLoader, prepared on the device.

The data layer does all data work: it loads and checks the splits, keeps the labelled share of
the training set, and in `on_after_batch_transfer` (Lightning's hook for on-device batch work)
turns uint8 batches into normalised float batches, augmented views for training. Models receive
`(x, y)` (supervised) or `(view_1, …, view_k, y)` (SSL) and do no data work.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from sslpath.core.errors import UserError
from sslpath.data.augment import BatchTransform
from sslpath.data.digest import file_digest
from sslpath.data.download import (
    DownloadError,
    check_download_setting,
    class_names,
    download,
    official_filename,
    official_source,
    size_text,
)
from sslpath.data.folder import MAX_PIXELS, TileFolder
from sslpath.data.loader import Batch, BatchLoader, training_batches
from sslpath.data.node_cache import node_splits
from sslpath.data.npz import read_npz
from sslpath.data.splits import Split, stratified_subset
from sslpath.data.stain_norm import StainNormalizer, fit_reference
from sslpath.data.synthetic import generator_digest, synthetic_splits

log = logging.getLogger(__name__)


OFFLINE_HINT = (
    "Offline you can train on any MedMNIST-format npz with data.path=FILE (see the README's 'Data' section: "
    "scripts/make_sample.py cuts a small one) or use data=synthetic."
)


class ArrayDataModule(L.LightningDataModule):
    """Train/val/test as tensors, served in whole batches.

    `keep_unlabelled=True` (SSL pretraining) keeps every training image and marks labels outside
    `label_fraction` with -1; otherwise the training split is the labelled subset itself.
    `val_label_fraction` < 1 validates on a stratified share of the validation split (a label-efficiency
    run that may not select its checkpoint with more labels than it trains with; sslpath.training.protocol).
    """

    def __init__(
        self,
        num_classes: int,
        batch_size: int,
        eval_batch_size: int,
        label_fraction: float = 1.0,
        val_label_fraction: float = 1.0,
        on_device: bool | str = "auto",
        seed: int = 0,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        channels_last: bool = True,
        augment: nn.Module | None = None,
        views: int = 1,
        clean_first_view: bool = False,
        keep_unlabelled: bool = False,
        stain_norm: str = "none",
        stain_reference: str | None = None,
        stain_min_tissue: float = 0.1,
        node_cache: bool | str = "auto",
        node_cache_dir: str = "/tmp/sslpath-node-cache",
    ) -> None:
        super().__init__()
        if on_device not in (True, False, "auto"):
            raise UserError(f"data.on_device={on_device!r}; use auto, true or false.")
        self.node_cache, self.node_cache_dir = node_cache, node_cache_dir
        self.num_classes, self.batch_size, self.eval_batch_size = num_classes, batch_size, eval_batch_size
        self.label_fraction, self.on_device, self.seed = label_fraction, on_device, seed
        self.val_label_fraction = val_label_fraction
        self.labelled_train_size: int | None = None  # labelled training images before the label subset
        self.keep_unlabelled = keep_unlabelled
        self.transform = BatchTransform(augment, views, clean_first_view, mean, std, channels_last)
        self.splits: dict[str, Split] | None = None
        self.pin_memory = False
        self.stain_norm, self.stain_reference, self.stain_min_tissue = stain_norm, stain_reference, stain_min_tissue

    @property
    def stain_record(self) -> dict[str, Any] | None:
        """The fitted stain normalisation (sslpath.data.stain_norm), for checkpoints; None without one."""
        return None if self.transform.stain is None else self.transform.stain.record

    def use_stain_record(self, record: dict[str, Any] | None) -> None:
        """Normalise with an already fitted record (a checkpoint's) instead of fitting one in setup."""
        self.transform.stain = StainNormalizer.from_record(record)

    @property
    def class_names(self) -> list[str]:
        return [f"class {i}" for i in range(self.num_classes)]

    def load_splits(self) -> dict[str, Split]:
        raise NotImplementedError

    def data_digest(self) -> str | None:
        """sha256 of the data's bytes, for keys of what was trained on it (None: the settings make the data)."""
        raise NotImplementedError

    def cache_source(self) -> dict[str, Any]:
        """What the splits are made from (the data's digest and the load settings): the node cache's key."""
        raise NotImplementedError

    def split_record(self) -> dict[str, Any] | None:
        """Which files each split holds, for checkpoints (None: the split is fixed by the data file itself)."""
        return None

    @property
    def train_labels_per_class(self) -> float:
        """Labelled training images per class (the label-efficiency plot's x-axis)."""
        if self.splits is None:
            raise RuntimeError("setup() must run first")
        return float((self.splits["train"].labels >= 0).sum()) / self.num_classes

    def labelled_tiles(self, split: str) -> Iterator[torch.Tensor]:
        """A split's labelled tiles (label >= 0), in order, in chunks (one here; a streamed split reads several)."""
        images, labels = self.splits[split].images, self.splits[split].labels
        yield images[(labels >= 0).to(images.device)]

    def labelled_labels(self, split: str) -> torch.Tensor:
        """The labels of `labelled_tiles(split)`, on the CPU."""
        labels = self.splits[split].labels
        return labels[labels >= 0].cpu()

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        splits = self._load()
        train, val = splits["train"], splits["val"]
        if self.stain_norm != "none" and self.transform.stain is None:  # fitted to every labelled training tile
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            labelled = train.images[train.labels >= 0]
            fitted = fit_reference(
                self.stain_norm, self.stain_reference, labelled, self.stain_min_tissue, self.eval_batch_size, device
            )
            self.use_stain_record(fitted)
        self.labelled_train_size = int((train.labels >= 0).sum())
        if self.val_label_fraction < 1:
            fix = ", or choose checkpoints without validation labels (selection=last)"
            shown = stratified_subset(val.labels, self.val_label_fraction, self.num_classes, self.seed, "validation", fix)
            splits["val"] = Split(val.images[shown], val.labels[shown])
        keep = stratified_subset(train.labels, self.label_fraction, self.num_classes, self.seed)
        if self.keep_unlabelled:
            labels = torch.full_like(train.labels, -1)
            labels[keep] = train.labels[keep]
            splits["train"] = Split(train.images, labels)
        elif len(keep) < len(train):  # every label kept: no copy of the images (nor of a mapped node cache)
            splits["train"] = Split(train.images[keep], train.labels[keep])
        self.splits = self._place(splits)

    def _load(self) -> dict[str, Split]:
        """The splits, mapped from one cache file per node (sslpath.data.node_cache) when data.node_cache says so
        (auto: when this node runs more than one process), else loaded by this process alone."""
        trainer = self.trainer
        local = trainer.world_size // max(1, trainer.num_nodes) if trainer is not None else 1
        if self.node_cache is False or (self.node_cache == "auto" and local < 2):
            return self.load_splits()
        return node_splits(self.node_cache_dir, self.cache_source(), self.load_splits)

    def _place(self, splits: dict[str, Split]) -> dict[str, Split]:
        """Move every split to the training device when it fits; else pin host memory."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type == "cpu":
            return splits
        nbytes = sum(s.images.numel() + s.labels.numel() * 8 for s in splits.values())
        fits = nbytes < 0.5 * torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else True
        if self.on_device is True or (self.on_device == "auto" and fits):
            return {k: Split(s.images.to(device), s.labels.to(device)) for k, s in splits.items()}
        self.pin_memory = device.type == "cuda"
        return splits

    def training_batches(self, images: int) -> int:
        """Training batches per epoch of this many images on this trainer's ranks."""
        return training_batches(images, self.batch_size, self.trainer.world_size if self.trainer is not None else 1)

    def loader(self, split: str, shuffle: bool) -> BatchLoader:
        if self.splits is None:
            raise RuntimeError("setup() must run before batches are served")
        trainer = self.trainer
        return BatchLoader(
            self.splits[split],
            self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            epoch=(lambda: trainer.current_epoch) if trainer is not None else (lambda: 0),
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> BatchLoader:
        loader = self.loader("train", shuffle=True)
        if self.trainer is not None and len(loader) < self.trainer.log_every_n_steps:
            # Step-level curves at least once an epoch on small data (and no warning about it).
            self.trainer.log_every_n_steps = max(1, len(loader))
        return loader

    def val_dataloader(self) -> BatchLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> BatchLoader:
        return self.loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        images, labels = batch
        if self.trainer is not None and self.trainer.training:
            return (*self.transform.train_views(images), labels)
        return self.transform(images), labels


class MedMNISTDataModule(ArrayDataModule):
    """The official MedMNIST file for `flag` under `root`, or any MedMNIST-format npz at `path`."""

    def __init__(
        self,
        flag: str = "pathmnist",
        root: str = "~/.medmnist",
        path: str | None = None,
        size: int = 28,
        download: bool | str = False,
        url: str | None = None,
        md5: str | None = None,
        num_classes: int | None = None,
        download_timeout_s: float = 15,
        **kwargs: Any,
    ) -> None:
        check_download_setting(download)
        if num_classes is None:  # official sets: the flag says how many classes
            num_classes = len(class_names(flag))
        super().__init__(num_classes=num_classes, **kwargs)
        self.flag, self.root, self.path, self.size = flag, Path(root).expanduser(), path, size
        self.download, self.url, self.md5, self.download_timeout_s = download, url, md5, download_timeout_s

    @property
    def class_names(self) -> list[str]:
        names = class_names(self.flag)
        # A custom file (data.path) with the flag's class count is taken to be a cut of that set, as
        # the PathMNIST sample is; any other count says nothing of its classes.
        return names if len(names) == self.num_classes else super().class_names

    @property
    def file(self) -> Path:
        if self.path is not None:
            return Path(self.path).expanduser()
        return self.root / official_filename(self.flag, self.size)

    def prepare_data(self) -> None:
        """Download a missing official file (or any, with download=true) once.

        Lightning calls this on local rank 0 of each node while the other ranks wait at a barrier;
        the lock in `download` keeps nodes sharing a disk, and sweep jobs, to one download.
        """
        if self.path is not None or (self.file.is_file() and self.download is not True):
            return
        url, md5 = official_source(self.flag, self.size)
        url, md5 = self.url or url, self.md5 or md5
        if self.download is False:
            raise UserError(
                f"{self.flag} not found at {self.file}, and data.download=false forbids fetching it. Download it "
                f"(CC BY 4.0) with data.download=auto, the default (from {url}, MD5-verified), or copy the file there, "
                f"or set data.root=DIR to where it lives. {OFFLINE_HINT}"
            )
        try:
            download(url, md5, self.file, self.download_timeout_s, force=self.download is True)
        except DownloadError as err:
            kept = (
                f"{size_text(err.kept)} are kept beside it and the next run resumes from there"
                if err.kept
                else "the next run tries again"
            )
            wait = ": data.download_timeout_s sets the wait" if err.timed_out else ""
            raise UserError(
                f"{self.flag} not found at {self.file}; sslpath tried to download it from {url} and could not "
                f"({err.cause}{wait}), so {kept}. Copy the file (CC BY 4.0, MD5 {md5}) there by hand, or set data.root=DIR to "
                f"where it lives. {OFFLINE_HINT} data.download=false never tries the network."
            ) from None

    def load_splits(self) -> dict[str, Split]:
        if not self.file.is_file():
            self.prepare_data()  # outside a Trainer (evaluate, benchmark) nobody called it yet
        return read_npz(self.file, self.num_classes, self.size)

    def data_digest(self) -> str:
        self.prepare_data()  # a download, when one is due, comes first
        return file_digest(self.file)

    def cache_source(self) -> dict[str, Any]:
        return {"data": "npz", "digest": self.data_digest(), "size": self.size, "num_classes": self.num_classes}


class SyntheticDataModule(ArrayDataModule):
    """Deterministic offline data for tests and dry runs; never used in place of missing real data."""

    def __init__(self, size: int = 28, train_count: int = 288, val_count: int = 96, test_count: int = 96, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.counts = {"train": train_count, "val": val_count, "test": test_count}

    def load_splits(self) -> dict[str, Split]:
        return synthetic_splits(self.size, self.num_classes, self.counts, self.seed)

    def data_digest(self) -> None:
        return None  # generated from size, counts and seed

    def cache_source(self) -> dict[str, Any]:
        settings = {"size": self.size, "counts": self.counts, "seed": self.seed, "num_classes": self.num_classes}
        return {"data": "synthetic", "generator": generator_digest(), **settings}


class FolderDataModule(ArrayDataModule):
    """Your own tiles: class subfolders of `dir` in any PIL format and size (see data/folder.py).

    They are converted once to size×size into a cached npz under `cache_dir`. Tiles under
    `unlabeled_dir` join the training split with label -1 when `keep_unlabelled` (SSL
    pretraining) and are left out otherwise.
    """

    def __init__(
        self,
        dir: str,
        unlabeled_dir: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        size: int = 28,
        cache_dir: str = "~/.medmnist/folder_cache",
        num_classes: int | None = None,
        seed: int = 0,
        max_pixels: int = MAX_PIXELS,
        **kwargs: Any,
    ) -> None:
        self.tiles = TileFolder(dir, unlabeled_dir, size, val_fraction, test_fraction, seed, cache_dir, max_pixels=max_pixels)
        found = len(self.tiles.class_names)
        if num_classes not in (None, found):
            raise UserError(
                f"data.num_classes={num_classes} but {dir} has {found} class folders "
                f"({', '.join(self.tiles.class_names)}); set data.num_classes={found} or null."
            )
        super().__init__(num_classes=found, seed=seed, **kwargs)
        self.size = size

    @property
    def class_names(self) -> list[str]:
        return self.tiles.class_names

    def prepare_data(self) -> None:
        """Convert once (Lightning calls this on one process per node, before setup)."""
        self.tiles.prepare()

    def data_digest(self) -> str:
        return self.tiles.digest

    def cache_source(self) -> dict[str, Any]:
        return {"data": "folder", "digest": self.tiles.digest, "size": self.size, "unlabelled": self.keep_unlabelled}

    def split_record(self) -> dict[str, Any]:
        """The split's settings (None for given train/ val/ test/ folders) and each split's file digest."""
        tiles = self.tiles
        settings = (None, None, None) if tiles.given_splits else (tiles.seed, tiles.val_fraction, tiles.test_fraction)
        return dict(zip(("seed", "val_fraction", "test_fraction"), settings)) | tiles.split_digests()

    def load_splits(self) -> dict[str, Split]:
        cache = self.tiles.prepare()  # a no-op after prepare_data; outside a Trainer nobody called that yet
        try:
            splits = read_npz(cache, self.num_classes, self.size, unlabeled=self.keep_unlabelled)
        except UserError as err:  # its record vouched for it: a forged record. The problem, not read_npz's advice:
            problem = str(err).split(". ")[0]  # that advice is for downloaded files
            raise UserError(
                f"the tile cache {cache}, converted from data.dir={self.tiles.root}, cannot be read ({problem}). Delete "
                f"{cache} and {self.tiles.sidecar} to convert the folder again, or set data.cache_dir=DIR."
            ) from None
        extra = splits.pop("unlabeled", None)
        if extra is not None:
            train = splits["train"]
            splits["train"] = Split(torch.cat([train.images, extra.images]), torch.cat([train.labels, extra.labels]))
        return splits
