"""Your own tiles: a folder of class subfolders, converted once into a cached MedMNIST-format npz.

Decoding thousands of PNG/JPEG/TIFF files costs far more than training a small model on them, so
the folder is read once into `<cache_dir>/<name>-<hash>.npz`, keyed by a digest of every file's
relative path and bytes and of the settings that change the result; every later run reads that npz
through `read_npz` like any other tile set. The sidecar `<name>-<hash>.json` records that digest,
the npz's own digest and each split's files (digests); a cache is used only when both digests
match, else it is converted anew with a warning. Unreadable files are skipped, but always named:
in a warning and in the sidecar. Files under `unlabeled_dir` that are also labelled tiles (the
same file or the same bytes) are left out of the unlabelled pool, so SSL never pretrains on a
validation or test tile.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from sslpath.core.errors import UserError
from sslpath.core.files import atomic_output, atomic_write_json, read_json
from sslpath.core.names import check_class_names, path_name, text_name
from sslpath.data import tile_files
from sslpath.data.digest import file_digest, is_digest, value_digest
from sslpath.data.images import IMAGE_SUFFIXES, MAX_PIXELS
from sslpath.data.npz import UNLABELED
from sslpath.data.splits import SPLITS

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # part of the key: bump it when conversion changes, so older caches are not reused


class TileFolder:
    """The classes and files of `root` and where their converted tiles are cached.

    `root` holds one subfolder per class (sorted; the class names are the folder names as printable
    text, `sslpath.core.names.text_name`, the folder names themselves kept in the sidecar), either directly, then split
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
        with tile_files.scanning(self.root):
            self.class_folders, self.files = self._scan()
            self.unlabeled_dir = Path(unlabeled_dir).expanduser().absolute() if unlabeled_dir is not None else None
            unlabeled = self._scan_unlabeled() if self.unlabeled_dir is not None else []
        self.class_names = [text_name(name) for name in self.class_folders]
        check_class_names(self.class_names, f"data.dir={text_name(str(self.root))}")
        self.given_splits = "all" not in self.files
        if not self.given_splits and not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise UserError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must each be above 0 "
                f"and sum to less than 1 to split {self.root} into train/val/test; use e.g. 0.1 and 0.1."
            )
        with tile_files.scanning(self.root):  # a file deleted or unreadable while its bytes are hashed
            self.contents = tile_files.contents([f for pairs in self.files.values() for f, _ in pairs] + unlabeled)
        self.unlabeled = self._outside_labelled(unlabeled)
        self.digest = self._digest()  # of every file's path and bytes, and of the settings: the data's identity
        key = f"{path_name(self.root.resolve().name)}-{self.digest[:16]}"
        cache_dir = Path(cache_dir).expanduser()
        self.cache_file = cache_dir / f"{key}.npz"
        self.sidecar = cache_dir / f"{key}.json"
        self.lock = cache_dir / f"{key}.lock"
        self.record: dict[str, Any] | None = None  # the sidecar of a checked or new cache

    def _scan(self) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
        """Class names and (file, label) pairs per given split, or under "all" for one folder."""
        if not self.root.is_dir():
            raise UserError(
                f"data.dir={self.root} is not a folder. Point data.dir at a folder with one subfolder of "
                "images per class (or train/ val/ test/ subfolders of those)."
            )
        top = tile_files.subfolders(self.root)
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
        names = {split: tile_files.subfolders(folder) for split, folder in folders.items()}
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
            split: [(f, c) for c, name in enumerate(classes) for f in tile_files.image_files(folder / name)]
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
        files = tile_files.image_files(self.unlabeled_dir) if self.unlabeled_dir.is_dir() else []
        if not files:
            raise UserError(
                f"data.unlabeled_dir={self.unlabeled_dir} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}, "
                "searched recursively). Point it at a folder of extra tiles, or set data.unlabeled_dir=null."
            )
        return files

    def _outside_labelled(self, unlabeled: list[Path]) -> list[Path]:
        """The unlabelled files that are not also labelled tiles: not the same file (by resolved path, so
        links count) and not the same bytes. data.unlabeled_dir may be data.dir itself, or hold copies."""
        labelled = [(f, split) for split, pairs in self.files.items() for f, _ in pairs]
        same_path = {os.path.realpath(f): split for f, split in labelled}
        same_bytes = {self.contents[f]: split for f, split in labelled if self.contents[f] is not None}
        kept, dropped = [], Counter()
        for file in unlabeled:
            split = same_path.get(os.path.realpath(file)) or same_bytes.get(self.contents[file])
            if split is None:
                kept.append(file)
            else:
                dropped[split] += 1
        if unlabeled and not kept:
            raise UserError(
                f"every image file under data.unlabeled_dir={self.unlabeled_dir} is also a labelled tile of "
                f"data.dir={self.root} (the same file or the same bytes), so no unlabelled tile is left: SSL must not "
                "pretrain on validation or test tiles. Point data.unlabeled_dir at a folder of extra tiles only, or set "
                "data.unlabeled_dir=null."
            )
        if dropped:
            where = f" ({', '.join(f'{n} of {split}/' for split, n in sorted(dropped.items()))})" if self.given_splits else ""
            log.warning(
                "data.unlabeled_dir=%s: left out %d of its %d image files that are labelled tiles of data.dir=%s%s, "
                "the same file or the same bytes, so SSL pretraining never sees a validation or test tile; it uses "
                "the other %d.",
                self.unlabeled_dir,
                sum(dropped.values()),
                len(unlabeled),
                self.root,
                where,
                len(kept),
            )
        return kept

    def _digest(self) -> str:
        """sha256 of every file's relative path, label and bytes, and of the settings the tiles depend on."""

        def entry(file: Path, folder: Path) -> list[str | None]:
            return [str(file.relative_to(folder)), self.contents[file]]

        listing = {split: [[*entry(f, self.root), c] for f, c in pairs] for split, pairs in self.files.items()}
        listing["unlabeled"] = [entry(f, self.unlabeled_dir) for f in self.unlabeled]
        settings = {"format": CACHE_FORMAT, "size": self.size}
        if self.max_pixels != MAX_PIXELS:  # a different cap may skip different files
            settings["max_pixels"] = self.max_pixels
        if not self.given_splits:
            settings |= {"val_fraction": self.val_fraction, "test_fraction": self.test_fraction, "seed": self.seed}
        return value_digest({"files": listing, "settings": settings})

    def prepare(self) -> Path:
        """The cached npz, converted now unless a cache of exactly these files and settings is there.

        A file lock makes concurrent runs on one folder wait for a single conversion.
        """
        if self.record is not None:
            return self.cache_file
        with self._writing():
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(self.lock)
            lock.acquire()
        try:
            problem = self._check_cache()
            if problem is None:
                log.info("reusing cached tiles %s (converted from %s; contents checked)", self.cache_file, self.root)
                tile_files.warn_skipped(self.record["skipped"], self.root, self.sidecar)
                self._warn_leaked(self.record["leaked"])
            else:
                if self.cache_file.exists():  # a lone sidecar is a conversion that stopped: nothing to warn of
                    log.warning(
                        "the tile cache %s %s; converting %s anew and replacing it. (Delete the cache's files, or set "
                        "data.cache_dir=DIR, to start a cache elsewhere.)",
                        self.cache_file,
                        problem,
                        self.root,
                    )
                self._convert()
        finally:
            lock.release()
        return self.cache_file

    def _check_cache(self) -> str | None:
        """None when the cache and its sidecar are exactly what converting the folder now would write; else
        what is wrong. The npz is hashed too: a planted, edited or damaged file never passes."""
        if not self.cache_file.is_file():
            return "is missing"
        try:
            record = read_json(self.sidecar)
        except (OSError, ValueError) as err:
            return f"has no readable record {self.sidecar} ({type(err).__name__})"
        if not self._is_record(record):
            return f"has a record {self.sidecar} that this sslpath did not write"
        if record["source_digest"] != self.digest:
            return f"was made from other files or settings than data.dir={self.root} holds now"
        if record["npz_sha256"] != file_digest(self.cache_file):
            return "does not match the digest its record holds (edited, damaged, or put there by something else)"
        self.record = record
        return None

    def _is_record(self, record: Any) -> bool:
        """The sidecar's schema: plain values only, as _convert writes them."""
        keys = {"format", "source", "source_digest", "npz_sha256", "class_names", "class_folders", "skipped", "splits", "leaked"}
        return (
            isinstance(record, dict)
            and set(record) == keys
            and record["format"] == CACHE_FORMAT
            and is_digest(record["source_digest"])
            and is_digest(record["npz_sha256"])
            and record["class_names"] == self.class_names
            and record["class_folders"] == self.class_folders
            and tile_files.is_file_notes(record["skipped"], "error")
            and tile_files.is_file_notes(record["leaked"], "same_as")
            and isinstance(record["splits"], dict)
            and set(record["splits"]) == set(SPLITS)
            and all(is_digest(d) for d in record["splits"].values())
        )

    def split_digests(self) -> dict[str, str]:
        """Per split, the sha256 of its files' relative paths and bytes (sorted): which tiles it holds."""
        self.prepare()
        return dict(self.record["splits"])

    def _convert(self) -> None:
        labelled = [pair for pairs in self.files.values() for pair in pairs]
        files = [f for f, _ in labelled] + self.unlabeled
        tiles, readable, skipped = tile_files.read_tiles(files, self.size, f"converting {self.root.name}", self.max_pixels)
        # A first sidecar, so the errors below can point at its list of unreadable files; the cache is
        # valid only once the npz and then the sidecar with the npz's digest are written.
        record = {"format": CACHE_FORMAT, "source": str(self.root), "source_digest": self.digest, "npz_sha256": None}
        record |= {"class_names": self.class_names, "skipped": skipped, "splits": None, "leaked": []}
        record["class_folders"] = self.class_folders  # the originals: JSON keeps an undecodable byte as \udcNN
        with self._writing():
            atomic_write_json(self.sidecar, record)
        tile_files.warn_skipped(skipped, self.root, self.sidecar)
        labels = np.array([c for _, c in labelled] + [-1] * len(self.unlabeled))[readable]
        groups = [split for split, pairs in self.files.items() for _ in pairs] + ["unlabeled"] * len(self.unlabeled)
        groups = np.array(groups)[readable]
        arrays, index = self._arrays(tiles, labels, groups)
        with self._writing(), atomic_output(self.cache_file) as f:
            np.savez(f, **arrays)
        split_files = {split: [files[readable[i]] for i in idx] for split, idx in index.items()}
        record["npz_sha256"] = file_digest(self.cache_file)
        record["splits"] = {split: self._files_digest(chosen) for split, chosen in split_files.items()}
        record["leaked"] = self._leaked(split_files)
        with self._writing():
            atomic_write_json(self.sidecar, record)
        self.record = record
        self._warn_leaked(record["leaked"])
        log.info("cached %d tiles of %s in %s", len(readable), self.root, self.cache_file)

    def _files_digest(self, files: list[Path]) -> str:
        return value_digest(sorted([str(f.relative_to(self.root)), self.contents[f]] for f in files))

    def _leaked(self, split_files: dict[str, list[Path]]) -> list[dict[str, str]]:
        """Validation and test files with the same bytes as a training file: a score would count them as unseen."""
        train = {self.contents[f]: f for f in split_files["train"]}
        return [
            {"file": str(f), "same_as": str(train[self.contents[f]])}
            for split in ("val", "test")
            for f in split_files[split]
            if self.contents[f] in train
        ]

    def _warn_leaked(self, leaked: list[dict[str, str]]) -> None:
        if leaked:
            shown = "; ".join(text_name(f"{d['file']} = {d['same_as']}") for d in leaked[: tile_files.SHOWN_SKIPS])
            log.warning(
                "%d validation/test tile(s) of %s have the same bytes as a training tile (all listed in %s): %s. Their "
                "scores count them as unseen; remove the copies from data.dir.",
                len(leaked),
                self.root,
                self.sidecar,
                shown,
            )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            raise UserError(
                f"could not write the tile cache {self.cache_file} ({err}). Set data.cache_dir=DIR to a "
                "writable folder with room for the converted tiles."
            ) from None

    def _arrays(
        self, tiles: np.ndarray, labels: np.ndarray, groups: np.ndarray
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """MedMNIST-format members (the three splits of the labelled tiles, and the unlabelled ones), and
        each split's positions in `tiles`."""
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
        return arrays, index

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
