"""Issue 20 items 2-3: the synthetic generator in bounded chunks, one data copy per node (the
memory-mapped node cache), and the full-shape check in reduced form."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from sslpath.data import node_cache
from sslpath.data.datamodule import SyntheticDataModule
from sslpath.data.node_cache import cache_key, cache_path, node_splits
from sslpath.data.splits import SPLITS, Split
from sslpath.data.synthetic import synthetic_bytes, synthetic_splits

from factories import TINY, cli_env, run_cli

REPO = Path(__file__).resolve().parents[1]
COUNTS = {"train": 23, "val": 11, "test": 7}


def whole_split_reference(size: int, num_classes: int, counts: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """The generator as it was before chunking (whole-split float64 arrays): chunking must not change a value."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = {}
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
        out[split] = np.clip(img * 255, 0, 255).astype(np.uint8)
        out[f"{split}_labels"] = labels
    return out


@pytest.mark.parametrize("chunk_bytes", [1, 40_000, 1 << 30])  # one tile per chunk, a few tiles, the whole split
def test_chunked_generator_draws_the_same_tiles_as_whole_splits(chunk_bytes):
    expected = whole_split_reference(16, 9, COUNTS, seed=5)
    splits = synthetic_splits(16, 9, COUNTS, seed=5, chunk_bytes=chunk_bytes)
    for split in SPLITS:
        assert splits[split].images.dtype == torch.uint8
        np.testing.assert_array_equal(splits[split].images.numpy(), expected[split])
        np.testing.assert_array_equal(splits[split].labels.numpy(), expected[f"{split}_labels"])


def generator_peak(counts: dict[str, int], chunk_bytes: int) -> int:
    tracemalloc.start()  # numpy reports its allocations to tracemalloc
    try:
        synthetic_splits(28, 9, counts, seed=0, chunk_bytes=chunk_bytes)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_generator_peak_memory_is_the_result_plus_one_chunk():
    counts = {"train": 1500, "val": 300, "test": 200}
    result = 3 * 28 * 28 * sum(counts.values())
    assert result < generator_peak(counts, 1 << 20) < 1.5 * result
    assert generator_peak(counts, 1 << 40) > 5 * result  # one chunk per split: the whole-split float64 work
    assert synthetic_bytes(28, counts, 1 << 20) < 1.5 * result  # the schema's memory rule counts the same bound


def splits_of(seed: int = 0) -> dict[str, Split]:
    return synthetic_splits(16, 9, COUNTS, seed)


class Loader:
    """A load function that counts its calls."""

    def __init__(self, seed: int = 0) -> None:
        self.calls, self.seed = 0, seed

    def __call__(self) -> dict[str, Split]:
        self.calls += 1
        return splits_of(self.seed)


def assert_same(a: dict[str, Split], b: dict[str, Split]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].images, b[k].images) and torch.equal(a[k].labels, b[k].labels)


def mapped_paths() -> list[str]:
    return [line.split(maxsplit=5)[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "splits-" in line]


def test_two_readers_map_one_file_written_once(tmp_path):
    load = Loader()
    first, second = node_splits(tmp_path, {"data": 1}, load), node_splits(tmp_path, {"data": 1}, load)
    assert load.calls == 1
    assert_same(first, splits_of())
    assert_same(second, splits_of())
    path = str(cache_path(tmp_path, cache_key({"data": 1})))
    assert mapped_paths().count(path) >= 2  # two mappings of the same file, no copy
    assert [p.name for p in tmp_path.glob("*.bin")] == [Path(path).name]
    first["train"].images[0] = 0  # copy-on-write: the file and the other reader keep their bytes
    assert_same(second, splits_of())


def corrupt_magic(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(b"X")


def truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 64)


def forge_count(path: Path) -> None:
    """A header claiming more training tiles than the file holds (its length prefix kept consistent)."""
    data = path.read_bytes()
    start = len(node_cache.MAGIC) + node_cache.LENGTH.size
    (length,) = node_cache.LENGTH.unpack(data[len(node_cache.MAGIC) : start])
    header = data[start : start + length].replace(b'["train", 23,', b'["train", 99,')
    assert header != data[start : start + length]
    path.write_bytes(data[: len(node_cache.MAGIC)] + node_cache.LENGTH.pack(len(header)) + header + data[start + length :])


def other_key(path: Path) -> None:
    """A valid cache of other data, renamed to this key's file name."""
    other = Loader(seed=1)
    node_splits(path.parent / "other", {"data": 2}, other)
    (path.parent / "other" / cache_path("", cache_key({"data": 2})).name).replace(path)


@pytest.mark.parametrize("damage", [corrupt_magic, truncate, forge_count, other_key])
def test_a_cache_failing_its_checks_is_rebuilt_not_mapped(tmp_path, damage, caplog):
    load = Loader()
    node_splits(tmp_path, {"data": 1}, load)
    damage(cache_path(tmp_path, cache_key({"data": 1})))
    assert_same(node_splits(tmp_path, {"data": 1}, load), splits_of())
    assert load.calls == 2
    assert "fails its checks" in caplog.text


def test_other_data_gets_its_own_cache_and_the_stale_one_is_removed(tmp_path):
    node_splits(tmp_path, {"digest": "a"}, Loader(seed=0))
    other = Loader(seed=1)
    assert_same(node_splits(tmp_path, {"digest": "b"}, other), splits_of(1))
    assert other.calls == 1
    assert [p.name for p in tmp_path.glob("*.bin")] == [cache_path("", cache_key({"digest": "b"})).name]


def test_an_unwritable_cache_dir_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(Exception, match="data.node_cache_dir=DIR") as err:
        node_splits(blocker / "cache", {"data": 1}, Loader())
    assert type(err.value).__name__ == "UserError"


def datamodule(tmp_path: Path, node_cache: bool | str, seed: int = 0) -> SyntheticDataModule:
    counts = {f"{k}_count": v for k, v in COUNTS.items()}
    settings = {"size": 16, "num_classes": 9, "batch_size": 8, "eval_batch_size": 8, "seed": seed, **counts}
    return SyntheticDataModule(node_cache=node_cache, node_cache_dir=str(tmp_path), **settings)


def test_one_process_keeps_the_in_memory_path_unless_asked(tmp_path):
    dm = datamodule(tmp_path, "auto")
    dm.setup()
    assert not list(tmp_path.glob("*.bin"))  # no trainer, one process: loaded in memory as before
    shared = datamodule(tmp_path, True)
    shared.setup()
    assert len(list(tmp_path.glob("*.bin"))) == 1
    assert_same(shared.splits, dm.splits)
    other_seed = datamodule(tmp_path, True, seed=3)
    other_seed.setup()  # the seed makes other tiles: another key, not the first cache
    assert_same(other_seed.splits, synthetic_splits(16, 9, COUNTS, 3))


class MapRecorder(L.Callback):
    """Each rank's view of its training images: which cache files this process maps."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"maps": sorted(set(mapped_paths())), "train": len(trainer.datamodule.splits["train"])}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.cli
def test_two_ddp_ranks_map_one_copy_of_the_data(tmp_path):
    result = run_cli(
        "model=baseline",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.sync_batchnorm=false",
        f"data.node_cache_dir={tmp_path}/cache",
        "+callbacks.spy._target_=test_scale.MapRecorder",
        f"+callbacks.spy.out={tmp_path}/spy",
        f"hydra.run.dir={tmp_path}/run",
        f"paths.log_dir={tmp_path}/logs",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = [str(p) for p in (tmp_path / "cache").glob("*.bin")]
    assert len(files) == 1  # written once, by one rank
    records = [json.loads((tmp_path / "spy" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["maps"] for r in records] == [files, files]  # both ranks map that one file
    assert [r["train"] for r in records] == [72, 72]


@pytest.mark.slow
def test_full_shape_check_runs_in_reduced_form(tmp_path):
    out = tmp_path / "scale.json"
    command = [sys.executable, str(REPO / "scripts" / "scale_check.py"), "--counts", "720,100,100", "--train-batches", "2"]
    command += ["--batch-size", "48", "--knn-rows", "2000", "--no-docs", "--work", str(tmp_path / "work"), "--json", str(out)]
    result = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    runs = {r["model"]: r for r in figures["runs"]}
    for run in runs.values():
        assert run["split_counts"] == {"train": 720, "val": 100, "test": 100}
        assert run["train_batches"] == 2 and run["predictions"]["rows"] == 100
        assert run["peak_rss_mib"] >= run["load_peak_mib"] > run["data_mib"] > 0
    bank = runs["simclr"]["knn_bank"]
    assert bank["rows"] == 2 * 48 and runs["simclr"]["knn_queries"] == 100  # the bank holds the trained batches only
    assert runs["simclr"]["projector_output"]["shape"][0] == 2 * 48  # SimCLR projects both views in one pass
    assert [k["rows"] for k in figures["knn"]] == [2000, 2000] and figures["knn"][1]["width"] == 512
    assert runs["simclr"]["after_test_s"] > 0 and all(k["compute_peak_above_mib"] >= 0 for k in figures["knn"])
    assert "### Scale check" in result.stdout and "PathMNIST's full splits are" in result.stdout
