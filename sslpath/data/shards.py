"""Tile shards on plain files, for pools larger than memory: written once by `sslpath.prepare`, read by
`data=stream` (sslpath.data.stream) a batch at a time.

A shard dir holds, per split, numbered pairs of raw files: `<split>-00000.tiles` (uint8 tiles, N×3×S×S, the
layout of a batch) and `<split>-00000.labels` (int64 little-endian, -1 for an unlabelled tile), plus
`index.json` naming them with their tile counts. Nothing is pickled or decoded from a format: a tile is S×S×3
bytes at a known offset. The shard files are untrusted like any file a user hands us: the index is read as
plain JSON and checked against the format (version, size, plain file names, counts matching every file's
byte size) before a tile is read; labels are checked against the class count as they are read.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslpath.core.errors import UserError
from sslpath.core.files import atomic_write_json, read_untrusted_json
from sslpath.data.digest import value_digest
from sslpath.data.npz import MIN_TILE
from sslpath.data.splits import SPLITS

FORMAT = "sslpath-shards"
VERSION = 1  # bump when the layout changes: older shard dirs are refused, never misread
INDEX = "index.json"
MAX_INDEX_BYTES = 64 << 20  # an index names shards, not tiles: 64 MiB holds over a million shard entries
MAX_SIZE = 4096  # pixels a side
LABEL_BYTES = 8
SHARD_NAME = re.compile(rf"({'|'.join(SPLITS)})-\d{{5}}\.(tiles|labels)")
REPREPARE = "Write the shards again with `python -m sslpath.prepare` (this version), or point data.dir at a shard dir it wrote."


def tile_bytes(size: int) -> int:
    return 3 * size * size


class ShardWriter:
    """Appends tiles to a split's shards, `tiles_per_shard` to a file, in a hidden dir beside `out` that becomes
    `out` only when `finish` writes the index: an interrupted prepare leaves no shard dir that looks complete."""

    def __init__(self, out: str | Path, size: int, tiles_per_shard: int) -> None:
        self.out = Path(out).expanduser().absolute()
        if self.out.exists():
            raise UserError(f"{self.out} already exists; shards are written to a new dir. Delete it or choose another --out.")
        if not (MIN_TILE <= size <= MAX_SIZE) or tiles_per_shard < 1:
            raise UserError(
                f"--size must be {MIN_TILE} to {MAX_SIZE} and --tiles-per-shard at least 1 (got {size}, {tiles_per_shard})."
            )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        self.size, self.tiles_per_shard = size, tiles_per_shard
        self.splits: dict[str, dict[str, Any]] = {}

    def add(self, split: str, tiles: torch.Tensor, labels: np.ndarray) -> None:
        """Append uint8 N×3×S×S tiles and their int labels (-1: unlabelled) to `split`."""
        entry = self.splits.setdefault(split, {"count": 0, "labelled": 0, "shards": []})
        data, labels = tiles.contiguous().numpy(), np.asarray(labels, dtype="<i8")
        done = 0
        while done < len(data):
            shards = entry["shards"]
            if not shards or shards[-1]["count"] == self.tiles_per_shard:
                name = f"{split}-{len(shards):05d}"
                shards.append({"tiles": f"{name}.tiles", "labels": f"{name}.labels", "count": 0})
            shard = shards[-1]
            take = min(self.tiles_per_shard - shard["count"], len(data) - done)
            with open(self.tmp / shard["tiles"], "ab") as f:
                f.write(data[done : done + take].tobytes())
            with open(self.tmp / shard["labels"], "ab") as f:
                f.write(labels[done : done + take].tobytes())
            shard["count"] += take
            done += take
        entry["count"] += len(data)
        entry["labelled"] += int((labels >= 0).sum())

    def finish(self, num_classes: int | None, class_names: list[str] | None, source: dict[str, Any]) -> Path:
        index = {
            "format": FORMAT,
            "version": VERSION,
            "size": self.size,
            "layout": "tiles: uint8 N x 3 x size x size, C order; labels: int64 little-endian, -1 unlabelled",
            "num_classes": num_classes,
            "class_names": class_names,
            "splits": self.splits,
            "source": source,
        }
        atomic_write_json(self.tmp / INDEX, index)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a shard dir should read like any other
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class ShardSplit:
    """One split of a shard dir: `read(indices)` -> (uint8 B×3×S×S tiles, int64 labels), one pread per tile.
    Files are opened lazily in each process (DataLoader workers open their own)."""

    def __init__(self, root: Path, name: str, size: int, num_classes: int | None, shards: list[dict[str, Any]]) -> None:
        self.root, self.name, self.size, self.num_classes = root, name, size, num_classes
        self.files = [(root / s["tiles"], root / s["labels"]) for s in shards]
        counts = np.array([s["count"] for s in shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.fds: dict[int, tuple[int, int]] = {}
        self.pid = -1

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _fds(self, shard: int) -> tuple[int, int]:
        if self.pid != os.getpid():  # a forked worker: its own descriptors
            self.fds, self.pid = {}, os.getpid()
        if shard not in self.fds:
            self.fds[shard] = tuple(os.open(f, os.O_RDONLY) for f in self.files[shard])
        return self.fds[shard]

    def read(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        n, size = tile_bytes(self.size), self.size
        tiles = np.empty((len(indices), 3, size, size), np.uint8)
        labels = np.empty(len(indices), "<i8")
        shards = np.searchsorted(self.starts, indices, side="right") - 1
        for i, (index, shard) in enumerate(zip(indices.tolist(), shards.tolist(), strict=True)):
            offset = index - int(self.starts[shard])
            tile_fd, label_fd = self._fds(shard)
            got = os.preadv(tile_fd, [memoryview(tiles[i]).cast("B")], offset * n)
            got_label = os.preadv(label_fd, [memoryview(labels[i : i + 1]).cast("B")], offset * LABEL_BYTES)
            if got != n or got_label != LABEL_BYTES:
                raise UserError(
                    f"{self.files[shard][0]} or its labels ended early (changed since data=stream checked it). {REPREPARE}"
                )
        self.check_labels(labels, f"{self.root} ({self.name} shards)")
        return torch.from_numpy(tiles), torch.from_numpy(labels.astype(np.int64))

    def check_labels(self, labels: np.ndarray, where: str) -> None:
        top = self.num_classes if self.num_classes is not None else 0
        bad = (labels < -1) | (labels >= top)
        if bad.any():
            raise UserError(
                f"{where} hold the label {int(labels[bad][0])}, outside -1 (unlabelled) to {top - 1}: the shards "
                f"are corrupt. {REPREPARE}"
            )

    def all_labels(self, chunk: int = 1 << 20) -> torch.Tensor:
        """Every label, read and checked a chunk at a time (8 bytes a tile: small beside the tiles)."""
        parts = []
        for _, label_file in self.files:
            with open(label_file, "rb") as f:
                while block := f.read(chunk * LABEL_BYTES):
                    parts.append(np.frombuffer(block, "<i8"))
        labels = np.concatenate(parts) if parts else np.empty(0, "<i8")
        self.check_labels(labels, f"{self.root} ({self.name} labels)")
        return torch.from_numpy(labels.astype(np.int64))


class ShardSet:
    """A checked shard dir (see the module docstring); any defect is a UserError naming the dir and the fix."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        index = self.root / INDEX
        if not index.is_file():
            raise UserError(
                f"data.dir={self.root} holds no shard index ({INDEX}): it is not a shard dir, or its prepare did not "
                f"finish. Write one with `python -m sslpath.prepare --out DIR ...` and set data.dir=DIR."
            )
        try:
            record = read_untrusted_json(index, MAX_INDEX_BYTES)
        except ValueError as err:
            raise UserError(f"{index} is not a readable shard index ({err}). {REPREPARE}") from None
        self.index = self._check(record, index)
        self.size: int = self.index["size"]
        self.num_classes: int | None = self.index["num_classes"]
        self.class_names: list[str] | None = self.index["class_names"]
        self.digest = value_digest(self.index)  # names every shard and its count; sizes are checked against them

    def _check(self, record: Any, index: Path) -> dict[str, Any]:
        def bad(problem: str) -> UserError:
            return UserError(f"{index}: {problem}. {REPREPARE}")

        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise bad(f"not an {FORMAT} index")
        if record.get("version") != VERSION:
            raise bad(f"written in shard format version {record.get('version')!r}; this sslpath reads version {VERSION}")
        size, classes, names = record.get("size"), record.get("num_classes"), record.get("class_names")
        if type(size) is not int or not MIN_TILE <= size <= MAX_SIZE:
            raise bad(f"size {size!r} is not a tile size from {MIN_TILE} to {MAX_SIZE}")
        if classes is not None and (type(classes) is not int or not 2 <= classes <= 100_000):
            raise bad(f"num_classes {classes!r} is not null or an integer of at least 2")
        if names is not None and not (
            isinstance(names, list) and len(names) == classes and all(isinstance(n, str) for n in names)
        ):
            raise bad("class_names is not null or a list of num_classes names")
        splits = record.get("splits")
        if not isinstance(splits, dict) or not set(splits) <= set(SPLITS) or "train" not in splits:
            raise bad(f"splits must be a train split and optionally val and test, got {list(splits or [])}")
        for name, split in splits.items():
            self._check_split(name, split, size, bad)
        return record

    def _check_split(self, name: str, split: Any, size: int, bad: Any) -> None:
        if not isinstance(split, dict) or not isinstance(split.get("shards"), list) or not split["shards"]:
            raise bad(f"split {name} lists no shards")
        total = 0
        for shard in split["shards"]:
            count = shard.get("count") if isinstance(shard, dict) else None
            if type(count) is not int or count < 1:
                raise bad(f"a {name} shard has no positive tile count")
            for kind, each in (("tiles", tile_bytes(size)), ("labels", LABEL_BYTES)):
                file = shard.get(kind)
                if not isinstance(file, str) or not SHARD_NAME.fullmatch(file) or not file.startswith(f"{name}-"):
                    raise bad(f"{kind} file name {file!r} is not a {name} shard name such as {name}-00000.{kind}")
                path = self.root / file
                if not path.is_file():
                    raise bad(f"the shard file {file} is missing")
                if path.stat().st_size != count * each:
                    need = count * each
                    raise bad(
                        f"{file} holds {path.stat().st_size} bytes, but {count} tiles of {size} px need {need}: it is "
                        "truncated or corrupt"
                    )
            total += count
        if split.get("count") != total:
            raise bad(f"split {name} says {split.get('count')!r} tiles but its shards hold {total}")

    def splits(self) -> list[str]:
        return list(self.index["splits"])

    def split(self, name: str) -> ShardSplit:
        return ShardSplit(self.root, name, self.size, self.num_classes, self.index["splits"][name]["shards"])
