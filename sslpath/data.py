"""MedMNIST-format data: loading, validation, download, synthetic data and device-resident batches.

Each split is held as one uint8 tensor (N×C×H×W) and served in whole batches by indexing it, on the
training device when it fits: at 28 px PathMNIST is ~250 MB, so per-image Python and worker processes
would cost more than the model. Augmentation happens on the batch, on the device (see augment.py).
"""

from __future__ import annotations

import hashlib
import logging
import math
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from sslpath.errors import UserError
from sslpath.files import atomic_output

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DOWNLOAD_TIMEOUT_S = 20


@dataclass
class Split:
    images: torch.Tensor  # uint8, N×C×H×W
    labels: torch.Tensor  # int64, N; -1 marks an image whose label is withheld

    def __len__(self) -> int:
        return len(self.labels)


# ----------------------------------------------------------------------------------------------
# Reading and validating MedMNIST-format npz files


def read_npz(path: str | Path, num_classes: int) -> dict[str, Split]:
    """Load and check every split; any defect is a UserError naming the file and the problem."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"data file not found: {path}. Pass an existing MedMNIST-format .npz with data.path=FILE, "
            "or use data=pathmnist data.download=true, or data=synthetic for an offline dry run."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise UserError(
            f"{path} is not a readable .npz file ({type(err).__name__}: {err}). It may be truncated or "
            "not an npz at all: download it again (data.download=true verifies its MD5) or point "
            "data.path at a MedMNIST-format npz."
        ) from None
    return {split: _check_split(path, arrays, split, num_classes) for split in SPLITS}


def _check_split(path: Path, arrays: dict[str, np.ndarray], split: str, num_classes: int) -> Split:
    img_key, lab_key = f"{split}_images", f"{split}_labels"
    missing = [k for k in (img_key, lab_key) if k not in arrays]
    if missing:
        raise UserError(
            f"{path} lacks the key(s) {missing} (it has {sorted(arrays)}). A MedMNIST-format npz holds "
            "train/val/test_images (uint8 N×H×W×3) and train/val/test_labels (N×1)."
        )
    images, labels = arrays[img_key], arrays[lab_key]
    if images.dtype != np.uint8:
        raise UserError(
            f"{path}: {img_key} has dtype {images.dtype}, expected uint8 (0–255). Convert the images "
            "with np.clip(x, 0, 255).astype(np.uint8) before saving."
        )
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise UserError(
            f"{path}: {img_key} has shape {images.shape}, expected N×H×W×3 square RGB tiles "
            "(e.g. N×28×28×3)."
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(
            f"{path}: {lab_key} has shape {arrays[lab_key].shape} for {len(images)} images; expected "
            f"({len(images)}, 1) integer class indices."
        )
    if len(images) == 0:
        raise UserError(f"{path}: the {split} split is empty; every split needs at least one image.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(
            f"{path}: {lab_key} holds values from {labels.min()} to {labels.max()} ({labels.dtype}), "
            f"but data.num_classes={num_classes} needs integers in [0, {num_classes - 1}]. Fix the "
            "labels or set data.num_classes."
        )
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return Split(tensor, torch.from_numpy(labels.astype(np.int64)))


def resize_splits(splits: dict[str, Split], size: int) -> dict[str, Split]:
    """Resize once at load time (antialiased bilinear) so a file of any tile size feeds the model."""
    out = {}
    for name, split in splits.items():
        if split.images.shape[-1] == size:
            out[name] = split
            continue
        chunks = [
            F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True)
            .round_()
            .clamp_(0, 255)
            .to(torch.uint8)
            for chunk in split.images.split(4096)
        ]
        out[name] = Split(torch.cat(chunks), split.labels)
    return out


# ----------------------------------------------------------------------------------------------
# Official files and download


def official_filename(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def official_source(flag: str, size: int) -> tuple[str, str]:
    """URL and MD5 of the official MedMNIST file, from medmnist.INFO."""
    import medmnist

    if flag not in medmnist.INFO:
        raise UserError(f"unknown MedMNIST flag data.flag={flag}; choose one of {sorted(medmnist.INFO)}.")
    info = medmnist.INFO[flag]
    suffix = "" if size == 28 else f"_{size}"
    if f"url{suffix}" not in info:
        raise UserError(
            f"{flag} has no official file at data.size={size}; choose 28, 64, 128 or 224, or pass "
            "data.path=FILE (a custom file is resized to data.size)."
        )
    return info[f"url{suffix}"], info[f"MD5{suffix}"]


def download(url: str, md5: str, dest: Path) -> Path:
    """Stream to a temp file beside dest, check the MD5, then rename: dest is whole or absent."""
    digest = hashlib.md5()
    try:
        with atomic_output(dest, suffix=".part") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            while block := resp.read(1 << 20):
                digest.update(block)
                out.write(block)
            if digest.hexdigest() != md5:
                raise UserError(
                    f"downloaded {url} but its MD5 is {digest.hexdigest()}, expected {md5}; the file was "
                    "discarded. Retry the download, or fetch the file by hand and check it with `md5sum`."
                )
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise UserError(
            f"could not download {url} to {dest} ({err}). Without network access, copy the file to "
            f"{dest} by hand, or train on a local MedMNIST-format npz with data.path=FILE, or use "
            "data=synthetic for a dry run."
        ) from None
    return dest


# ----------------------------------------------------------------------------------------------
# Synthetic data


def synthetic_splits(size: int, num_classes: int, counts: dict[str, int], seed: int) -> dict[str, Split]:
    """Seeded tiles whose class sets hue, stripe frequency and stripe angle: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    splits = {}
    for split in SPLITS:
        n = counts[split]
        labels = np.arange(n) % num_classes
        rng.shuffle(labels)
        angle = np.pi * labels / num_classes + rng.normal(0, 0.15, n)
        freq = 2.0 + 3.0 * (labels % 3) + rng.normal(0, 0.3, n)
        phase = rng.uniform(0, 2 * np.pi, n)
        proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])
        hue = 2 * np.pi * labels / num_classes
        colour = 0.5 + 0.35 * np.stack([np.cos(hue + k * 2 * np.pi / 3) for k in range(3)], axis=1)
        img = colour[:, :, None, None] * (0.55 + 0.45 * stripes[:, None])
        img += rng.normal(0, 0.06, img.shape)
        images = np.clip(img * 255, 0, 255).astype(np.uint8)
        splits[split] = Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))
    return splits


# ----------------------------------------------------------------------------------------------
# Label fractions


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


# ----------------------------------------------------------------------------------------------
# Batches


class BatchLoader:
    """Batches by indexing whole-split tensors: one gather per batch, no workers, no collation.

    Under DDP each rank takes an equal, disjoint share of a shared permutation (padded for
    evaluation, like DistributedSampler). Shuffling is seeded by (seed, epoch), so a resumed run
    sees the same order as an uninterrupted one.
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
        # Training drops the ragged last batch (BatchNorm and NT-Xent need full batches); evaluation
        # keeps every image.
        self.per_rank = n // world_size if shuffle else math.ceil(n / world_size)
        self.batch_size = min(batch_size, self.per_rank) if shuffle else batch_size
        if shuffle and self.batch_size < batch_size:
            log.warning("training split has %d images per rank: batch size %d -> %d", n, batch_size, self.batch_size)

    def __len__(self) -> int:
        if self.shuffle:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch())
            order = torch.randperm(n, generator=gen)[: self.per_rank * self.world_size]
        else:
            order = torch.arange(n)
            order = torch.cat([order, order[: self.per_rank * self.world_size - n]])
        order = order[self.rank :: self.world_size].to(self.split.images.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            images, labels = self.split.images[idx], self.split.labels[idx]
            if self.pin_memory:
                images, labels = images.pin_memory(), labels.pin_memory()
            yield images, labels


class ArrayDataModule(L.LightningDataModule):
    """Holds train/val/test as tensors and serves them through BatchLoader.

    `keep_unlabelled=True` (SSL pretraining) keeps every training image and marks labels outside
    `label_fraction` with -1; otherwise the training split is the labelled subset itself.
    """

    def __init__(
        self,
        num_classes: int,
        batch_size: int,
        eval_batch_size: int,
        label_fraction: float = 1.0,
        on_device: bool | str = "auto",
        seed: int = 0,
        keep_unlabelled: bool = False,
    ) -> None:
        super().__init__()
        if on_device not in (True, False, "auto"):
            raise UserError(f"data.on_device={on_device!r}; use auto, true or false.")
        self.num_classes, self.batch_size, self.eval_batch_size = num_classes, batch_size, eval_batch_size
        self.label_fraction, self.on_device, self.seed = label_fraction, on_device, seed
        self.keep_unlabelled = keep_unlabelled
        self.splits: dict[str, Split] | None = None
        self.pin_memory = False

    @property
    def class_names(self) -> list[str]:
        return [f"class {i}" for i in range(self.num_classes)]

    def load_splits(self) -> dict[str, Split]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        splits = self.load_splits()
        train = splits["train"]
        keep = stratified_subset(train.labels, self.label_fraction, self.num_classes, self.seed)
        if self.keep_unlabelled:
            labels = torch.full_like(train.labels, -1)
            labels[keep] = train.labels[keep]
            splits["train"] = Split(train.images, labels)
        else:
            splits["train"] = Split(train.images[keep], train.labels[keep])
        self.splits = self._place(splits)

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

    def _loader(self, split: str, shuffle: bool) -> BatchLoader:
        assert self.splits is not None, "setup() must run first"
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
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> BatchLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> BatchLoader:
        return self._loader("test", shuffle=False)

    def labelled_train_loader(self) -> BatchLoader:
        """The labelled training images in evaluation order (the kNN monitor's feature bank)."""
        assert self.splits is not None, "setup() must run first"
        train = self.splits["train"]
        labelled = torch.nonzero(train.labels >= 0).flatten()
        split = Split(train.images[labelled], train.labels[labelled])
        return BatchLoader(split, self.eval_batch_size, shuffle=False, pin_memory=self.pin_memory)


class MedMNISTDataModule(ArrayDataModule):
    """The official MedMNIST file for `flag` under `root`, or any MedMNIST-format npz at `path`."""

    def __init__(
        self,
        flag: str = "pathmnist",
        root: str = "~/.medmnist",
        path: str | None = None,
        size: int = 28,
        download: bool = False,
        url: str | None = None,
        md5: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.flag, self.root, self.path, self.size = flag, Path(root).expanduser(), path, size
        self.download, self.url, self.md5 = download, url, md5

    @property
    def class_names(self) -> list[str]:
        import medmnist

        labels = medmnist.INFO.get(self.flag, {}).get("label", {})
        if len(labels) != self.num_classes:
            return super().class_names
        return [labels[str(i)] for i in range(self.num_classes)]

    @property
    def file(self) -> Path:
        if self.path is not None:
            return Path(self.path).expanduser()
        return self.root / official_filename(self.flag, self.size)

    def prepare_data(self) -> None:
        if self.path is not None or self.file.is_file():
            return
        url, md5 = official_source(self.flag, self.size)
        url, md5 = self.url or url, self.md5 or md5
        if not self.download:
            raise UserError(
                f"{self.flag} not found at {self.file}. Download it (~200 MB at 28 px, CC BY 4.0) with "
                f"data.download=true (from {url}, MD5-verified), or copy the file there, or set "
                f"data.root=DIR to where it lives. Offline you can train on any MedMNIST-format npz with "
                f"data.path=FILE (e.g. data.path=../shared/data/pathmnist_sample.npz) or use data=synthetic."
            )
        log.info("downloading %s to %s", url, self.file)
        download(url, md5, self.file)

    def load_splits(self) -> dict[str, Split]:
        self.prepare_data()
        return resize_splits(read_npz(self.file, self.num_classes), self.size)


class SyntheticDataModule(ArrayDataModule):
    """Deterministic offline data for tests and dry runs; never used in place of missing real data."""

    def __init__(self, size: int = 28, train_count: int = 288, val_count: int = 96, test_count: int = 96, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.counts = {"train": train_count, "val": val_count, "test": test_count}

    def load_splits(self) -> dict[str, Split]:
        return synthetic_splits(self.size, self.num_classes, self.counts, self.seed)
