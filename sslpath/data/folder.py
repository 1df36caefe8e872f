"""Your own tiles: a folder of class subfolders, converted once into a cached MedMNIST-format npz.

Decoding thousands of PNG/JPEG/TIFF files costs far more than training a small model on them, so
the folder is read once into `<cache_dir>/<name>-<hash>.npz`, keyed by its listing (relative
paths, sizes, mtimes) and the settings that change the result; every later run reads that npz
through `read_npz` like any other tile set. Unreadable files are skipped, but always named: in a
warning and in the sidecar `<name>-<hash>.json`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from sslpath.core.errors import UserError
from sslpath.core.files import atomic_output, atomic_write_json, read_json
from sslpath.data.npz import UNLABELED
from sslpath.data.preprocess import to_tiles
from sslpath.data.splits import SPLITS

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
CACHE_FORMAT = 1  # part of the key: bump it when conversion changes, so older caches are not reused
SHOWN_SKIPS = 10  # unreadable files a warning names; the sidecar lists all of them
# Default cap on an image's pixels: tiles are small, and a 120-megapixel file would take gigabytes to decode.
MAX_PIXELS = 50_000_000


class TooLargeImage(ValueError):
    """An image with more pixels than the cap: refused before it is decoded."""


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any PIL-readable file -> uint8 H×W×3 RGB at its native size (resizing is to_tiles' job).

    An image of more than `max_pixels` pixels is refused (TooLargeImage) from its header, before decoding.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap below decides, with a reason
        image = Image.open(path)
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise TooLargeImage(
                f"{width}x{height} pixels is more than the cap of {max_pixels:,} pixels (max_pixels); cut it into tiles first"
            )
        return np.array(image.convert("RGB"))


def image_files(folder: Path) -> list[Path]:
    """Image files under folder, recursively and sorted; hidden files and folders are left out, and
    linked folders are not entered (as Path.rglob). A loop over a stack, not recursion: a folder
    nested a thousand deep is walked, not a RecursionError."""
    found, stack = [], [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                    found.append(Path(entry.path))
    return sorted(found)


@contextlib.contextmanager
def _scanning(root: Path) -> Iterator[None]:
    """An OS error while the folder is listed (a file deleted mid-scan, a path too long) is the user's to fix."""
    try:
        yield
    except OSError as err:
        name = str(err.filename or "")
        name = name if len(name) <= 160 else f"{name[:80]}…{name[-60:]}"  # a path past PATH_MAX would fill the screen
        where = f"{err.strerror or err}: {name}" if name else str(err)
        if isinstance(err, FileNotFoundError):
            fix = "it was moved or deleted while the folder was read. Run again once nothing changes the folder."
        elif err.errno == errno.ENAMETOOLONG:
            fix = "a path under it is longer than the system allows (folders nested too deeply?). Move the images up."
        else:
            fix = "check that the folder and everything under it can be read."
        raise UserError(f"could not list the images of data.dir={root} ({where}): {fix}") from None


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class TileFolder:
    """The classes and files of `root` and where their converted tiles are cached.

    `root` holds one subfolder per class (the class names, sorted), either directly, then split
    per class by `val_fraction`/`test_fraction` (seeded), or under `train/ val/ test/`, then used
    as given. A class's images may sit anywhere below its folder. Files under `unlabeled_dir`
    (recursively) are kept apart, for SSL pretraining.
    """

    def __init__(
        self,
        root: str | Path,
        unlabeled_dir: str | Path | None,
        size: int,
        val_fraction: float,
        test_fraction: float,
        seed: int,
        cache_dir: str | Path,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.root = Path(root).expanduser().absolute()  # absolute: messages and the sidecar name files unambiguously
        self.size, self.val_fraction, self.test_fraction, self.seed = size, val_fraction, test_fraction, seed
        if type(max_pixels) is not int or max_pixels < 1:
            raise UserError(
                f"data.max_pixels={max_pixels} is not a positive integer; it caps the pixels of an image that is "
                f"decoded (default {MAX_PIXELS})."
            )
        self.max_pixels = max_pixels
        with _scanning(self.root):
            self.class_names, self.files = self._scan()
            self.unlabeled_dir = Path(unlabeled_dir).expanduser().absolute() if unlabeled_dir is not None else None
            self.unlabeled = self._scan_unlabeled() if self.unlabeled_dir is not None else []
        self.given_splits = "all" not in self.files
        if not self.given_splits and not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise UserError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must each be above 0 "
                f"and sum to less than 1 to split {self.root} into train/val/test; use e.g. 0.1 and 0.1."
            )
        with _scanning(self.root):
            key = self._key()
        cache_dir = Path(cache_dir).expanduser()
        self.cache_file = cache_dir / f"{key}.npz"
        self.sidecar = cache_dir / f"{key}.json"
        self.ready = False  # prepare() has run in this process: later calls need not log again

    def _scan(self) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
        """Class names and (file, label) pairs per given split, or under "all" for one folder."""
        if not self.root.is_dir():
            raise UserError(
                f"data.dir={self.root} is not a folder. Point data.dir at a folder with one subfolder of "
                "images per class (or train/ val/ test/ subfolders of those)."
            )
        top = _subfolders(self.root)
        split_dirs = [name for name in top if name in SPLITS]
        if not split_dirs:
            return self._classes_of({"all": self.root})
        if split_dirs != sorted(SPLITS) or len(top) > len(SPLITS):
            raise UserError(
                f"data.dir={self.root} has the subfolders {top}: a split layout needs exactly train/, val/ and "
                "test/, each holding the same class subfolders. Add the missing split folders and move any "
                "other folder out, or put the class folders directly in data.dir to split them by "
                "data.val_fraction and data.test_fraction."
            )
        return self._classes_of({split: self.root / split for split in SPLITS})

    def _classes_of(self, folders: dict[str, Path]) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
        names = {split: _subfolders(folder) for split, folder in folders.items()}
        classes = names.get("train", names.get("all"))
        if len(classes) < 2:
            raise UserError(
                f"data.dir={self.root} holds {len(classes)} class subfolder(s) {classes}; a classifier needs at "
                "least two. Put each class's images in a subfolder named after the class (e.g. "
                "data.dir/tumour/*.png, data.dir/stroma/*.png)."
            )
        for split, found in names.items():
            if found != classes:
                raise UserError(
                    f"{folders[split]} has the class folders {found} but train/ has {classes}; every split "
                    "needs the same class subfolders (an empty one is allowed in val/ and test/)."
                )
        files = {
            split: [(f, c) for c, name in enumerate(classes) for f in image_files(folder / name)]
            for split, folder in folders.items()
        }
        first = files.get("train", files.get("all"))
        empty = [name for c, name in enumerate(classes) if not any(label == c for _, label in first)]
        if empty:
            raise UserError(
                f"the class folder(s) {empty} under {folders.get('train', self.root)} hold no image files "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder(s)."
            )
        return classes, files

    def _scan_unlabeled(self) -> list[Path]:
        files = image_files(self.unlabeled_dir) if self.unlabeled_dir.is_dir() else []
        if not files:
            raise UserError(
                f"data.unlabeled_dir={self.unlabeled_dir} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}, "
                "searched recursively). Point it at a folder of extra tiles, or set data.unlabeled_dir=null."
            )
        return files

    def _key(self) -> str:
        """`<folder name>-<hash>` of the listing and of the settings the converted tiles depend on."""

        def entry(file: Path, folder: Path) -> list[str | int]:
            stat = file.stat()
            return [str(file.relative_to(folder)), stat.st_size, stat.st_mtime_ns]

        listing = {split: [[*entry(f, self.root), c] for f, c in pairs] for split, pairs in self.files.items()}
        listing["unlabeled"] = [entry(f, self.unlabeled_dir) for f in self.unlabeled]
        settings = {"format": CACHE_FORMAT, "size": self.size}
        if self.max_pixels != MAX_PIXELS:  # a different cap may skip different files; the default keeps old keys valid
            settings["max_pixels"] = self.max_pixels
        if not self.given_splits:
            settings |= {"val_fraction": self.val_fraction, "test_fraction": self.test_fraction, "seed": self.seed}
        payload = json.dumps({"files": listing, "settings": settings}, sort_keys=True)
        return f"{self.root.resolve().name}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"

    def prepare(self) -> Path:
        """The cached npz, converted now unless an unchanged folder's cache is already there."""
        if self.ready:
            return self.cache_file
        if self.cache_file.is_file() and self.sidecar.is_file():
            log.info("reusing cached tiles %s (converted from %s)", self.cache_file, self.root)
            self._warn_skipped(read_json(self.sidecar)["skipped"])
        else:
            self._convert()
        self.ready = True
        return self.cache_file

    def _convert(self) -> None:
        labelled = [pair for pairs in self.files.values() for pair in pairs]
        files = [f for f, _ in labelled] + self.unlabeled
        tiles, readable, skipped = _read_tiles(files, self.size, f"converting {self.root.name}", self.max_pixels)
        # The sidecar comes first, so the errors below can point at its list of unreadable files;
        # a cache counts as present only once the npz, written last, is there too.
        with self._writing():
            sidecar = {"source": str(self.root), "class_names": self.class_names, "skipped": skipped}
            atomic_write_json(self.sidecar, sidecar)
        self._warn_skipped(skipped)
        labels = np.array([c for _, c in labelled] + [-1] * len(self.unlabeled))[readable]
        groups = [split for split, pairs in self.files.items() for _ in pairs] + ["unlabeled"] * len(self.unlabeled)
        groups = np.array(groups)[readable]
        arrays = self._arrays(tiles, labels, groups)
        with self._writing(), atomic_output(self.cache_file) as f:
            np.savez(f, **arrays)
        log.info("cached %d tiles of %s in %s", len(readable), self.root, self.cache_file)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            raise UserError(
                f"could not write the tile cache {self.cache_file} ({err}). Set data.cache_dir=DIR to a "
                "writable folder with room for the converted tiles."
            ) from None

    def _arrays(self, tiles: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, np.ndarray]:
        """MedMNIST-format members: the three splits of the labelled tiles, and the unlabelled ones."""
        if self.given_splits:
            index = {split: np.flatnonzero(groups == split) for split in SPLITS}
            self._check_classes(labels[index["train"]], self.root / "train")
        else:
            pool = np.flatnonzero(groups == "all")
            self._check_classes(labels[pool], self.root)
            index = self._split(labels, pool)
        arrays = {}
        for split, idx in index.items():
            if len(idx) == 0:
                raise UserError(
                    f"{self.root / split} holds no readable image; every split needs at least one. Add images "
                    f"to it (unreadable files, if any, are listed in {self.sidecar})."
                )
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = tiles[idx], labels[idx, None]
        unlabeled = np.flatnonzero(groups == "unlabeled")
        if self.unlabeled and len(unlabeled) == 0:
            raise UserError(
                f"no file under data.unlabeled_dir={self.unlabeled_dir} could be read (all are listed in "
                f"{self.sidecar}); replace them, or set data.unlabeled_dir=null."
            )
        if len(unlabeled):
            arrays[UNLABELED] = tiles[unlabeled]
        return arrays

    def _split(self, labels: np.ndarray, pool: np.ndarray) -> dict[str, np.ndarray]:
        """Seeded per-class split of one folder: each class keeps at least one image in every split."""
        rng = np.random.default_rng(self.seed)
        parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
        for c, name in enumerate(self.class_names):
            idx = rng.permutation(pool[labels[pool] == c])
            n_val, n_test = (max(1, round(f * len(idx))) for f in (self.val_fraction, self.test_fraction))
            n_train = len(idx) - n_val - n_test
            if n_train < 1:
                raise UserError(
                    f"class {name!r} has {len(idx)} readable image(s) under {self.root}: splitting it with "
                    f"data.val_fraction={self.val_fraction} and data.test_fraction={self.test_fraction} leaves "
                    "no training image. Every class needs at least 3 (one per split): add images, lower the "
                    "fractions, or give train/ val/ test/ subfolders."
                )
            for split, chosen in zip(SPLITS, np.split(idx, [n_train, n_train + n_val])):
                parts[split].append(chosen)
        return {split: np.sort(np.concatenate(chosen)) for split, chosen in parts.items()}

    def _check_classes(self, labels: np.ndarray, where: Path) -> None:
        counts = np.bincount(labels, minlength=len(self.class_names))
        empty = [name for name, n in zip(self.class_names, counts) if n == 0]
        if empty:
            raise UserError(
                f"the class(es) {empty} under {where} have no readable image (unreadable files are listed in "
                f"{self.sidecar}); a class needs at least one. Replace the unreadable files or remove the "
                "class folder."
            )

    def _warn_skipped(self, skipped: list[dict[str, str]]) -> None:
        if skipped:
            shown = "; ".join(f"{s['file']} ({s['error']})" for s in skipped[:SHOWN_SKIPS])
            more = f"; … and {len(skipped) - SHOWN_SKIPS} more" if len(skipped) > SHOWN_SKIPS else ""
            log.warning(
                "skipped %d unreadable image file(s) under %s (all listed in %s): %s%s. Replace or delete them.",
                len(skipped),
                self.root,
                self.sidecar,
                shown,
                more,
            )


def _read_tiles(
    files: list[Path], size: int, desc: str, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """uint8 N×size×size×3 tiles of the readable files, their indices in `files`, and the others."""
    tiles, readable, skipped = [], [], []
    for i, file in enumerate(tqdm(files, desc=desc, unit="img", disable=None)):  # disable=None: a bar only on a TTY
        try:
            image = read_image(file, max_pixels)
        except Exception as err:  # decoders raise many types on malformed files; one must not stop the rest
            skipped.append({"file": str(file), "error": f"{type(err).__name__}: {err}"})
            continue
        tiles.append(to_tiles(image[None], size)[0].permute(1, 2, 0))
        readable.append(i)
    stacked = torch.stack(tiles).numpy() if tiles else np.empty((0, size, size, 3), np.uint8)
    return stacked, np.array(readable, dtype=np.int64), skipped
