"""What `python -m sslpath.prepare` does: tiles from a folder, an npz or a list of files, written once as shards
(sslpath.data.shards), a chunk of files at a time so memory stays bounded whatever the pool's size.

Sources:
- a folder: class subfolders -> a labelled training split (the class names are the folder names, as data=folder);
  train/ val/ test/ subfolders of class folders -> those splits; image files and no subfolders -> an unlabelled pool.
- an npz (MedMNIST format, read by sslpath.data.npz as untrusted data): its train/val/test splits, and its
  `unlabeled_images` joined to train with label -1.
- a list of files (a text file, one path a line): an unlabelled pool.
An unlabelled pool needs val and test splits for training runs: `eval_npz` adds those of an npz.
Images are opened by sslpath.data.images.read_image only; unreadable files are skipped, counted, named in a
warning and all listed in the index (as data=folder does).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sslpath.core.errors import UserError
from sslpath.core.names import check_class_names, text_name
from sslpath.data import tile_files
from sslpath.data.images import MAX_PIXELS
from sslpath.data.npz import UNLABELED, read_arrays
from sslpath.data.preprocess import CHUNK, to_tiles
from sslpath.data.shards import INDEX, ShardWriter
from sslpath.data.splits import SPLITS

log = logging.getLogger(__name__)


def prepare(
    out: str | Path,
    size: int,
    tiles_per_shard: int,
    folder: str | Path | None = None,
    npz: str | Path | None = None,
    files: str | Path | None = None,
    eval_npz: str | Path | None = None,
    num_classes: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> dict[str, Any]:
    """Write the shard dir `out` from exactly one source; returns its index."""
    given = [name for name, value in (("--folder", folder), ("--npz", npz), ("--files", files)) if value is not None]
    if len(given) != 1:
        raise UserError(f"give exactly one source of --folder DIR, --npz FILE or --files LIST (got {given or 'none'}).")
    writer = ShardWriter(out, size, tiles_per_shard)
    try:
        if folder is not None:
            source, classes = _from_folder(writer, Path(folder).expanduser().absolute(), max_pixels)
        elif npz is not None:
            source, classes = _from_npz(writer, Path(npz).expanduser().absolute(), ("train", "val", "test", UNLABELED)), None
        else:
            source, classes = _from_list(writer, Path(files).expanduser().absolute(), max_pixels), None
        if eval_npz is not None:
            if {"val", "test"} & set(writer.splits):
                raise UserError(
                    f"--eval-npz adds val and test splits, but {given[0]} already gave "
                    f"{sorted({'val', 'test'} & set(writer.splits))}; leave it out."
                )
            source["eval_npz"] = _from_npz(writer, Path(eval_npz).expanduser().absolute(), ("val", "test"))
        found = _num_classes(writer, num_classes, classes)
        writer.finish(found, classes, source)
    except BaseException:
        writer.abort()
        raise
    return {"out": writer.out, "splits": writer.splits, "source": source}


def _num_classes(writer: ShardWriter, given: int | None, classes: list[str] | None) -> int | None:
    top = max((s["max_label"] for s in writer.splits.values() if "max_label" in s), default=-1)
    if classes is not None:
        found = len(classes)
    elif top < 0:
        found = None  # an unlabelled pool alone
    else:
        found = given if given is not None else max(top + 1, 2)
    if given is not None and found is not None and (given != found or top >= given):
        raise UserError(
            f"--num-classes={given} but the labels run from 0 to {top} ({found} classes); leave --num-classes out or fix it."
        )
    for split in writer.splits.values():
        split.pop("max_label", None)
    return found


def _add(writer: ShardWriter, split: str, tiles: Any, labels: np.ndarray) -> None:
    writer.add(split, tiles, labels)
    entry = writer.splits[split]
    entry["max_label"] = max(entry.get("max_label", -1), int(labels.max(initial=-1)))


def _from_npz(writer: ShardWriter, path: Path, members: Iterable[str]) -> dict[str, Any]:
    arrays = read_arrays(path, writer.size, unlabeled=UNLABELED in members)
    counts = {}
    for member in members:
        images = arrays.get(f"{member}_images" if member != UNLABELED else UNLABELED)
        if images is None:
            continue
        labels = arrays[f"{member}_labels"].reshape(-1).astype(np.int64) if member != UNLABELED else np.full(len(images), -1)
        if member != UNLABELED and labels.min(initial=0) < 0:
            raise UserError(f"{path}: {member}_labels holds negative values; class indices start at 0.")
        split = "train" if member == UNLABELED else member
        for start in range(0, len(images), CHUNK):
            _add(writer, split, to_tiles(images[start : start + CHUNK], writer.size), labels[start : start + CHUNK])
        counts[member] = len(images)
    return {"kind": "npz", "path": str(path), "tiles": counts}


def _from_folder(writer: ShardWriter, root: Path, max_pixels: int) -> tuple[dict[str, Any], list[str] | None]:
    if not root.is_dir():
        raise UserError(
            f"--folder {root} is not a folder of tiles (class subfolders, train/ val/ test/ of them, or image files)."
        )
    with tile_files.scanning(root):
        top = tile_files.subfolders(root)
        if not top:  # image files alone: an unlabelled pool
            return _read_files(writer, root, {"train": [(f, -1) for f in tile_files.image_files(root)]}, max_pixels), None
        split_dirs = {name: root / name for name in top if name in SPLITS}
        if split_dirs and set(top) != set(SPLITS):
            raise UserError(f"--folder {root} has the subfolders {top}: a split layout needs exactly train/, val/ and test/.")
        folders = split_dirs or {"train": root}
        classes = tile_files.subfolders(folders["train"])
        if len(classes) < 2:
            raise UserError(
                f"--folder {root} holds {len(classes)} class subfolder(s); labelled tiles need at least "
                f"two (one subfolder per class)."
            )
        splits = {
            split: [(f, label) for label, name in enumerate(classes) for f in tile_files.image_files(folder / name)]
            for split, folder in folders.items()
        }
    names = [text_name(name) for name in classes]
    check_class_names(names, f"--folder {text_name(str(root))}")
    return _read_files(writer, root, splits, max_pixels), names


def _from_list(writer: ShardWriter, listing: Path, max_pixels: int) -> dict[str, Any]:
    try:
        lines = listing.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(
            f"--files {listing} cannot be read as a text list of image paths ({type(err).__name__}: {err})."
        ) from None
    files = [(listing.parent / line.strip(), -1) for line in lines if line.strip()]
    if not files:
        raise UserError(
            f"--files {listing} lists no files; write one image path a line (relative paths are read from its folder)."
        )
    return _read_files(writer, listing, {"train": files}, max_pixels)


def _read_files(writer: ShardWriter, root: Path, splits: dict[str, list[tuple[Path, int]]], max_pixels: int) -> dict[str, Any]:
    """Decode the files a chunk at a time; the unreadable are skipped, warned about and listed in the index."""
    skipped: list[dict[str, str]] = []
    for split, pairs in splits.items():
        for start in range(0, len(pairs), CHUNK):
            chunk = pairs[start : start + CHUNK]
            tiles, readable, bad = tile_files.read_tiles([f for f, _ in chunk], writer.size, f"{split} tiles", max_pixels)
            skipped += bad
            if len(readable):
                _add(writer, split, to_tiles(tiles, writer.size), np.array([chunk[i][1] for i in readable], dtype=np.int64))
        if split not in writer.splits:
            raise UserError(
                f"{root}: no readable image for the {split} split ({len(pairs)} file(s) found). "
                "Check the source holds PNG, JPEG, TIFF or BMP tiles."
            )
    tile_files.warn_skipped(skipped, root, writer.out / INDEX)
    files = sum(len(p) for p in splits.values())
    kind = "folder" if root.is_dir() else "files"
    return {"kind": kind, "path": str(root), "files": files, "skipped_count": len(skipped), "skipped": skipped}
