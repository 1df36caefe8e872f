"""Compare three ways to stream uint8 tiles from disk on this machine: sslpath's own shards (sslpath.data.shards),
litdata (`optimize` + StreamingDataset/StreamingDataLoader) and WebDataset (tar shards), on the same random tiles.

For each reader and worker count: tiles/s over one shuffled epoch (batches of uint8 B×3×S×S built and handed to
the training process), the reading process's and its workers' peak resident memory, and whether the reader can
resume mid-epoch. Also shows what litdata does with a shard dir whose index names its `pickle` serializer
(shards are untrusted files). Run: `python scripts/stream_bench.py --tiles 20000 --out /tmp/bench`
(writes the three datasets under --out, prints a markdown table). Needs `pip install litdata webdataset`.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import time
from pathlib import Path

import litdata
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from sslpath.data.shards import ShardSet, ShardWriter
from sslpath.data.stream import StreamLoader

CHUNK = 5000


def tiles_chunks(n: int, size: int, seed: int = 0):
    gen = np.random.default_rng(seed)
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        yield gen.integers(0, 256, (count, 3, size, size), dtype=np.uint8), gen.integers(0, 9, count)


def write_own(out: Path, n: int, size: int) -> None:
    writer = ShardWriter(out, size, 10_000)
    for tiles, labels in tiles_chunks(n, size):
        writer.add("train", torch.from_numpy(tiles), labels)
    writer.finish(9, None, {"kind": "bench"})


def _item(i: int, size: int = 28) -> dict:
    tile = np.random.default_rng(i).integers(0, 256, (3, size, size), dtype=np.uint8)
    return {"tile": tile.tobytes(), "label": int(i % 9)}


def write_litdata(out: Path, n: int, size: int) -> None:
    litdata.optimize(fn=_item, inputs=list(range(n)), output_dir=str(out), chunk_bytes="16MB", num_workers=1, mode="overwrite")


def write_wds(out: Path, n: int, size: int) -> None:
    out.mkdir(parents=True)
    with wds.ShardWriter(str(out / "shard-%05d.tar"), maxcount=10_000) as sink:
        i = 0
        for tiles, labels in tiles_chunks(n, size):
            for tile, label in zip(tiles, labels, strict=True):
                sink.write({"__key__": f"{i:08d}", "tile.bin": tile.tobytes(), "cls": str(int(label)).encode()})
                i += 1


def decode(raw: list[bytes], size: int) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(b"".join(raw), np.uint8).reshape(-1, 3, size, size).copy())


class Collate:
    """Raw tile bytes -> a uint8 batch (module level: litdata starts its workers by spawn, which pickles this)."""

    def __init__(self, size: int, wds: bool = False) -> None:
        self.size, self.wds = size, wds

    def __call__(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        if self.wds:
            return decode([t for t, _ in items], self.size), torch.tensor([int(c) for _, c in items])
        return decode([it["tile"] for it in items], self.size), torch.tensor([it["label"] for it in items])


def read_own(path: Path, workers: int, batch: int, size: int):
    return StreamLoader(ShardSet(path).split("train"), batch, seed=0, num_workers=workers)


def read_litdata(path: Path, workers: int, batch: int, size: int):
    dataset = litdata.StreamingDataset(str(path), shuffle=True, seed=0, drop_last=True)
    return litdata.StreamingDataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=Collate(size))


def read_wds(path: Path, workers: int, batch: int, size: int):
    urls = sorted(str(p) for p in path.glob("*.tar"))
    dataset = (
        wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node, empty_check=False)
        .shuffle(5000)
        .to_tuple("tile.bin", "cls")  # raw bytes: no decoder (its defaults include pickle for .pyd/.pickle keys)
        .batched(batch, collation_fn=Collate(size, wds=True))
    )
    return DataLoader(dataset, batch_size=None, num_workers=workers)


def peak_mib() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def measure(reader, path: Path, workers: int, batch: int, size: int) -> dict:
    """One epoch: its tiles/s, the wait for the first batch (worker start) and the rate after it (steady state)."""
    loader = reader(path, workers, batch, size)
    start, tiles, first = time.perf_counter(), 0, None
    for images, _ in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, size, size)
        if first is None:
            first, after = time.perf_counter() - start, -len(images)
        tiles += len(images)
        after += len(images)
    seconds = time.perf_counter() - start
    steady = after / max(seconds - first, 1e-9)
    return {
        "tiles": tiles,
        "seconds": round(seconds, 2),
        "tiles_per_s": round(tiles / seconds),
        "first_batch_s": round(first, 2),
        "steady_tiles_per_s": round(steady),
    }


def _pickled(i: int) -> dict:
    return {"x": pickle.dumps(("not", "an", "image", i))}


def litdata_pickle_probe(out: Path) -> str:
    """Rewrite a litdata index to name its pickle serializer and read an item: does litdata unpickle it?"""
    probe = out / "probe"
    litdata.optimize(fn=_pickled, inputs=[0, 1], output_dir=str(probe), chunk_bytes="1MB", num_workers=1, mode="overwrite")
    index = json.loads((probe / "index.json").read_text())
    index["config"]["data_format"] = ["pickle"]
    (probe / "index.json").write_text(json.dumps(index))
    item = litdata.StreamingDataset(str(probe))[0]
    return f"litdata returned {item!r} from bytes its index declared as pickle (it called pickle.loads on shard bytes)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--only", default="own,litdata,wds")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    writers = {"own": write_own, "litdata": write_litdata, "wds": write_wds}
    readers = {"own": read_own, "litdata": read_litdata, "wds": read_wds}
    resume = {
        "own": "yes: StreamLoader.state_dict (epoch, batches served), stored by Lightning",
        "litdata": "yes: StreamingDataLoader.state_dict",
        "wds": "no: restarts the epoch (no mid-epoch state)",
    }
    rows = []
    for name in args.only.split(","):
        path = args.out / name
        if path.exists():
            shutil.rmtree(path)
        start = time.perf_counter()
        writers[name](path, args.tiles, args.size)
        wrote = time.perf_counter() - start
        disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
        for workers in (int(w) for w in args.workers.split(",")):
            result = measure(readers[name], path, workers, args.batch, args.size)
            rows.append((name, workers, result, wrote, disk))
            line = {"reader": name, "workers": workers, **result, "write_s": round(wrote, 1), "disk_mib": round(disk, 1)}
            print(json.dumps(line), flush=True)
    own, children = peak_mib()
    print(f"\npeak RSS: this process {own:.0f} MiB, largest worker {children:.0f} MiB (all readers together)")
    print("\n| reader | workers | tiles/s (epoch) | first batch s | tiles/s after it | write s | disk MiB | mid-epoch resume |")
    print("|---|---|---|---|---|---|---|---|")
    for name, workers, r, wrote, disk in rows:
        rates = f"{r['tiles_per_s']:,} | {r['first_batch_s']} | {r['steady_tiles_per_s']:,}"
        print(f"| {name} | {workers} | {rates} | {wrote:.1f} | {disk:.1f} | {resume[name]} |")
    if "litdata" in args.only:
        print("\n" + litdata_pickle_probe(args.out))
    print(f"\n(cpu count {os.cpu_count()}, {args.tiles} tiles of {args.size} px, batch {args.batch})")


if __name__ == "__main__":
    main()
