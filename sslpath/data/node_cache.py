"""One copy of the splits per node: an uncompressed cache file every rank memory-maps.

Under DDP each rank used to load (or generate) its own uint8 splits, so a node held one copy per
rank. Here the first rank to take the cache's lock loads the splits once, writes them to
`splits-<key>.bin` (a temporary file renamed into place, so nobody maps half a file) and every rank
maps that file read-only: the pages sit once in the page cache and are shared by the ranks (each
rank's RSS counts them, its PSS only its share). The key is a sha256 of what the splits are made
from (the data's own digest and the load settings), so other data or settings never map a stale file.

The file is ours, but it is read like any other: its header is checked against the key, the split
names and the layout its counts imply, and that layout against the file's real size; a file that
fails any check is rebuilt, never mapped.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from sslpath.core.errors import UserError
from sslpath.data.digest import value_digest
from sslpath.data.npz import MIN_TILE
from sslpath.data.splits import Split

log = logging.getLogger(__name__)

MAGIC = b"SSLPATH-SPLITS\x00\x01"  # format name and version 1
LENGTH = struct.Struct("<Q")  # little-endian header length after the magic
MAX_HEADER = 1 << 16  # bytes: a header names a few splits; anything larger is not ours
ALIGN = 64  # every array starts on a 64-byte boundary (int64 labels need 8)
CHANNELS = 3
MAX_SIDE = 1 << 14  # pixels: no tile side sslpath resizes to comes near it


def cache_key(source: dict[str, Any]) -> str:
    """The cache file's key: what the splits are made from, with the file format."""
    return value_digest({"format": MAGIC.hex(), "source": source})


def cache_path(directory: str | Path, key: str) -> Path:
    return Path(directory).expanduser() / f"splits-{key}.bin"


def node_splits(directory: str | Path, source: dict[str, Any], load: Callable[[], dict[str, Split]]) -> dict[str, Split]:
    """The splits `load()` returns, mapped from this node's cache file (written once, by whoever comes first)."""
    key = cache_key(source)
    path = cache_path(directory, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.with_suffix(".lock")):
            if _layout(path, key) is None:
                if path.exists():
                    log.warning("the node's data cache %s fails its checks (header, key or size): writing it again", path)
                _write(path, key, load())
                _prune(path)
    except OSError as err:
        raise UserError(
            f"cannot write the node's data cache {path} ({type(err).__name__}: {err}). Free space there (it needs "
            "about the data's uint8 size), set data.node_cache_dir=DIR to a writable local disk, or data.node_cache=false "
            "to hold one copy per process."
        ) from None
    return map_splits(path, key)


def map_splits(path: Path, key: str) -> dict[str, Split]:
    """Split tensors backed by the cache file's pages (copy-on-write: a write never reaches the file)."""
    layout = _layout(path, key)
    if layout is None:
        raise UserError(
            f"the node's data cache {path} changed or broke while it was being read (its header or size no longer "
            "matches). Another job may share data.node_cache_dir: give each its own directory and run again."
        )
    whole = torch.from_file(str(path), shared=False, size=layout["bytes"], dtype=torch.uint8)
    splits = {}
    for entry in layout["splits"]:
        n, side = entry["count"], entry["size"]
        images = whole[entry["images"] : entry["images"] + n * CHANNELS * side * side].view(n, CHANNELS, side, side)
        labels = whole[entry["labels"] : entry["labels"] + 8 * n].view(torch.int64)
        splits[entry["name"]] = Split(images, labels)
    return splits


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


def _plan(key: str, shapes: list[tuple[str, int, int]]) -> dict[str, Any]:
    """The file's layout for splits of (name, count, tile side): offsets follow from the counts alone."""
    probe = json.dumps({"key": key, "splits": [list(s) for s in shapes]}).encode()
    offset = _aligned(len(MAGIC) + LENGTH.size + len(probe))
    entries = []
    for name, n, side in shapes:
        images = offset
        labels = _aligned(images + n * CHANNELS * side * side)
        offset = _aligned(labels + 8 * n)
        entries.append({"name": name, "count": n, "size": side, "images": images, "labels": labels})
    return {"key": key, "splits": entries, "bytes": offset, "header": probe}


def _write(path: Path, key: str, splits: dict[str, Split]) -> None:
    for name, split in splits.items():
        shape = tuple(split.images.shape)
        if split.images.dtype != torch.uint8 or len(shape) != 4 or shape[1] != CHANNELS or shape[2] != shape[3]:
            raise ValueError(f"split {name}: expected uint8 N×3×S×S images, got {split.images.dtype} {shape}")
    plan = _plan(key, [(name, len(s), s.images.shape[-1]) for name, s in splits.items()])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + LENGTH.pack(len(plan["header"])) + plan["header"])
            for entry in plan["splits"]:
                split = splits[entry["name"]]
                for offset, tensor in ((entry["images"], split.images), (entry["labels"], split.labels.to(torch.int64))):
                    f.seek(offset)
                    f.write(memoryview(tensor.contiguous().numpy()).cast("B"))
            f.truncate(plan["bytes"])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote the node's data cache %s (%.1f MB)", path, plan["bytes"] / 1e6)


def _layout(path: Path, key: str) -> dict[str, Any] | None:
    """The layout of a complete cache file for `key`, or None when there is none or it fails a check."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + LENGTH.size)
            if len(head) != len(MAGIC) + LENGTH.size or head[: len(MAGIC)] != MAGIC:
                return None
            (length,) = LENGTH.unpack(head[len(MAGIC) :])
            if length > MAX_HEADER:
                return None
            header = f.read(length)
        stored = json.loads(header)
        shapes = [(str(name), int(n), int(side)) for name, n, side in stored["splits"]]
    except (OSError, ValueError, TypeError, KeyError):  # missing, unreadable, or not our JSON
        return None
    names = [name for name, _, _ in shapes]
    sane = all(n >= 0 and MIN_TILE <= side <= MAX_SIDE for _, n, side in shapes) and len(set(names)) == len(names)
    if stored.get("key") != key or not sane or not {"train", "val", "test"} <= set(names):
        return None
    plan = _plan(key, shapes)
    if plan["header"] != header or plan["bytes"] != size:  # layout recomputed from the counts, then the real size
        return None
    return plan


def _prune(keep: Path) -> None:
    """Drop the directory's other caches (other data or settings): ranks that mapped one keep their pages."""
    for other in keep.parent.glob("splits-*.bin"):
        if other != keep:
            other.unlink(missing_ok=True)
            log.info("removed the stale node data cache %s", other)
