"""data=stream and `python -m sslpath.prepare`: shards written from an npz, a folder and a file list; refused when
written by another version, truncated, forged or missing; seeded per-epoch order; disjoint rank shares that cover
every tile; a mid-epoch resume that serves exactly the remaining batches; a real run from shards."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from sslpath.core.errors import UserError
from sslpath.data.prepare_shards import prepare
from sslpath.data.shards import INDEX, ShardSet
from sslpath.data.stream import StreamDataModule, StreamLoader
from sslpath.training.fit import train

from factories import TINY_TRAINER, compose_cfg, read_metrics, run_cli, run_main

SIZE = 8
COUNTS = {"train": 100, "val": 20, "test": 20}


def write_npz(path: Path, counts: dict[str, int] = COUNTS, seed: int = 0, unlabeled: int = 0) -> dict[str, np.ndarray]:
    gen = np.random.default_rng(seed)
    arrays = {}
    for split, n in counts.items():
        arrays[f"{split}_images"] = gen.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(-1, 1)
    if unlabeled:
        arrays["unlabeled_images"] = gen.integers(0, 256, (unlabeled, SIZE, SIZE, 3), dtype=np.uint8)
    np.savez(path, **arrays)
    return arrays


@pytest.fixture
def shards(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    arrays = write_npz(tmp_path / "tiles.npz", unlabeled=10)
    prepare(tmp_path / "shards", SIZE, 32, npz=tmp_path / "tiles.npz")
    return tmp_path / "shards", arrays


def chw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def test_prepare_from_npz_stores_every_tile_and_label(shards):
    root, arrays = shards
    shard_set = ShardSet(root)
    assert shard_set.size == SIZE and shard_set.num_classes == 3 and shard_set.splits() == ["train", "val", "test"]
    train = shard_set.split("train")
    assert len(train) == 110 and len(shard_set.index["splits"]["train"]["shards"]) == 4  # 32 a shard
    tiles, labels = train.read(np.arange(110))
    assert torch.equal(tiles[:100], chw(arrays["train_images"])) and torch.equal(tiles[100:], chw(arrays["unlabeled_images"]))
    assert labels[:100].tolist() == arrays["train_labels"].ravel().tolist() and labels[100:].tolist() == [-1] * 10
    some = np.array([105, 3, 64, 31, 32])  # across shard boundaries, out of order
    assert torch.equal(train.read(some)[0], tiles[some])


def test_prepare_from_a_folder_names_and_counts_unreadable_files(tmp_path, caplog):
    gen = np.random.default_rng(1)
    for name in ("stroma", "tumour"):
        (tmp_path / "tiles" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(gen.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "tiles" / name / f"{i}.png")
    (tmp_path / "tiles" / "tumour" / "broken.png").write_bytes(b"not a png")
    run_main("sslpath.prepare", "--out", str(tmp_path / "shards"), "--folder", str(tmp_path / "tiles"), "--size", str(SIZE))
    index = json.loads((tmp_path / "shards" / INDEX).read_text())
    assert index["class_names"] == ["stroma", "tumour"] and index["splits"]["train"]["count"] == 6
    assert index["source"]["skipped_count"] == 1 and index["source"]["skipped"][0]["file"].endswith("broken.png")
    assert "skipped 1 unreadable image file(s)" in caplog.text
    labels = ShardSet(tmp_path / "shards").split("train").all_labels()
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_a_file_list_is_an_unlabelled_pool_and_needs_eval_splits(tmp_path):
    for i in range(4):
        Image.fromarray(np.full((SIZE, SIZE, 3), i * 40, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("".join(f"{i}.png\n" for i in range(4)))
    prepare(tmp_path / "pool", SIZE, 100, files=tmp_path / "list.txt")
    with pytest.raises(UserError, match="unlabelled pool alone.*--eval-npz"):
        StreamDataModule(str(tmp_path / "pool"), size=SIZE, batch_size=2, eval_batch_size=4)
    write_npz(tmp_path / "eval.npz")
    prepare(tmp_path / "both", SIZE, 100, files=tmp_path / "list.txt", eval_npz=tmp_path / "eval.npz")
    shard_set = ShardSet(tmp_path / "both")
    assert shard_set.split("train").all_labels().tolist() == [-1] * 4 and len(shard_set.split("test")) == 20


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: _edit_index(root, version=2), "version 2; this sslpath reads version 1"),
        (lambda root: _edit_index(root, format="litdata"), "not an sslpath-shards index"),
        (lambda root: _edit_index(root, size=16), "32 tiles of 16 px need 24576"),  # files no longer match the size
        (lambda root: (root / "train-00001.tiles").write_bytes(b"\0" * 10), "truncated or corrupt"),
        (lambda root: (root / "val-00000.labels").unlink(), "val-00000.labels is missing"),
        (lambda root: _edit_shard(root, tiles="../../etc/passwd"), "is not a train shard name"),
        (lambda root: (root / INDEX).write_text("{not json"), "not a readable shard index"),
        (lambda root: (root / INDEX).unlink(), "holds no shard index"),
    ],
)
def test_damaged_or_foreign_shards_are_refused_with_the_fix(shards, damage, message):
    root, _ = shards
    damage(root)
    with pytest.raises(UserError, match=message) as err:
        ShardSet(root)
    assert "sslpath.prepare" in str(err.value)


def _edit_index(root: Path, **changes) -> None:
    index = json.loads((root / INDEX).read_text())
    (root / INDEX).write_text(json.dumps(index | changes))


def _edit_shard(root: Path, **changes) -> None:
    index = json.loads((root / INDEX).read_text())
    index["splits"]["train"]["shards"][0].update(changes)
    (root / INDEX).write_text(json.dumps(index))


def test_labels_outside_the_classes_are_refused_when_read(shards):
    root, _ = shards
    labels = np.fromfile(root / "train-00000.labels", "<i8")
    labels[5] = 7
    labels.tofile(root / "train-00000.labels")
    with pytest.raises(UserError, match="label 7, outside -1"):
        ShardSet(root).split("train").all_labels()


def test_settings_that_do_not_match_the_shards_are_refused(shards):
    root, _ = shards
    with pytest.raises(UserError, match="holds 8 px tiles but data.size=16"):
        StreamDataModule(str(root), size=16, batch_size=8, eval_batch_size=8)
    with pytest.raises(UserError, match="data.num_classes=4 .* 3 classes"):
        StreamDataModule(str(root), size=SIZE, num_classes=4, batch_size=8, eval_batch_size=8)


def test_prepare_refuses_an_existing_out_dir_with_exit_2(shards, capsys):
    root, _ = shards
    with pytest.raises(SystemExit) as stop:
        run_main("sslpath.prepare", "--out", str(root), "--npz", str(root.parent / "tiles.npz"))
    assert stop.value.code == 2 and "already exists" in capsys.readouterr().err


def loader(root: Path, **kwargs) -> StreamLoader:
    return StreamLoader(ShardSet(root).split("train"), batch_size=10, seed=3, **kwargs)


def served(stream: StreamLoader) -> list[int]:
    """The tiles a loader serves, identified by their bytes' position in the split."""
    tiles = stream.split.read(np.arange(len(stream.split)))[0].flatten(1)
    lookup = {bytes(t.numpy()): i for i, t in enumerate(tiles)}
    return [lookup[bytes(t.numpy())] for images, _ in stream for t in images.flatten(1)]


def test_order_is_seeded_and_differs_per_epoch(shards):
    root, _ = shards
    first, again = served(loader(root)), served(loader(root))
    assert first == again and sorted(first) == sorted(set(first)) and len(first) == 110
    assert served(loader(root, epoch=lambda: 1)) != first
    assert first != sorted(first)


def test_ranks_share_the_tiles_without_duplicates_or_gaps(shards):
    root, _ = shards
    ranks = [served(loader(root, rank=r, world_size=2, epoch=lambda: 2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 50  # 55 a rank, batches of 10
    assert set(ranks[0]).isdisjoint(ranks[1])
    whole = set(range(110)) - set(ranks[0]) - set(ranks[1])
    assert len(whole) == 10  # only the ragged last batches are left out, a different 10 each epoch
    other = [served(loader(root, rank=r, world_size=2, epoch=lambda: 3)) for r in range(2)]
    assert set(range(110)) - set(other[0]) - set(other[1]) != whole


def test_workers_serve_the_same_batches_as_the_main_process(shards):
    root, _ = shards
    assert served(loader(root, num_workers=2)) == served(loader(root))


def test_a_shard_that_changes_under_a_worker_is_one_clear_error(shards):
    root, _ = shards
    stream = loader(root, num_workers=1)
    (root / "train-00001.tiles").write_bytes(b"\0" * 10)  # after the index was checked
    with pytest.raises(UserError, match="ended early") as err:
        list(stream)
    assert "Traceback" not in str(err.value)


def test_a_mid_epoch_resume_serves_exactly_the_remaining_batches(shards):
    root, _ = shards
    whole = served(loader(root, epoch=lambda: 4))
    first = loader(root, epoch=lambda: 4)
    batches = iter(first)
    done = [next(batches) for _ in range(4)]
    state = first.state_dict()
    assert state == {"epoch": 4, "served": 4}
    resumed = loader(root, epoch=lambda: 4)
    resumed.load_state_dict(state)
    rest = served(resumed)
    assert len(rest) == 70 and whole[40:] == rest and len(done) == 4
    assert len(served(resumed)) == 110  # the next pass is a whole epoch again
    with pytest.raises(UserError, match="not \\(epoch, batches served\\)"):
        resumed.load_state_dict({"epoch": 4, "served": 99})


@pytest.mark.slow
def test_ssl_run_from_shards_writes_metrics(shards, tmp_path):
    root, _ = shards
    out = tmp_path / "run"
    data = ["data=stream", f"data.dir={root}", f"data.size={SIZE}", "data.batch_size=16", "data.num_workers=1"]
    cfg = compose_cfg(out, ["model=simclr", *data, *TINY_TRAINER], tiny=False)
    train(cfg)
    metrics = read_metrics(out)
    assert metrics["model"] == "simclr" and metrics["epochs"] == 1 and "frozen_knn_acc" in metrics


@pytest.mark.cli
def test_two_ddp_ranks_stream_disjoint_shares(shards, tmp_path):
    root, _ = shards
    result = run_cli(
        "model=simclr", "data=stream", f"data.dir={root}", f"data.size={SIZE}", "data.batch_size=10",
        *TINY_TRAINER, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false",
        "+callbacks.spy._target_=test_stream.ShareRecorder", f"+callbacks.spy.out={tmp_path}/spy",
        f"hydra.run.dir={tmp_path}/run", f"paths.log_dir={tmp_path}/logs", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    shares = [json.loads((tmp_path / "spy" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [s["world_size"] for s in shares] == [2, 2]
    assert len(shares[0]["tiles"]) == len(shares[1]["tiles"]) == 50 and set(shares[0]["tiles"]).isdisjoint(shares[1]["tiles"])


class ShareRecorder(L.Callback):
    """Writes the tile indices its rank's stream loader serves this epoch."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stream = trainer.train_dataloader
        tiles = [int(i) for batch in stream.batches(trainer.current_epoch) for i in batch]
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"world_size": trainer.world_size, "tiles": tiles}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class Recorder(L.LightningModule):
    """A one-weight model that records the tiles of every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[bytes] = []

    def training_step(self, batch, batch_idx):
        self.seen += [bytes(t.numpy()) for t in batch[0].flatten(1)]
        return (self.weight * batch[0].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_resumes_a_stream_mid_epoch_from_its_checkpoint(shards, tmp_path):
    root, _ = shards
    args = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    whole = Recorder()
    L.Trainer(max_epochs=1, enable_checkpointing=False, **args).fit(whole, loader(root))
    first = Recorder()
    save = L.pytorch.callbacks.ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    L.Trainer(max_steps=4, callbacks=[save], **args).fit(first, loader(root))
    rest = Recorder()
    L.Trainer(max_epochs=1, enable_checkpointing=False, **args).fit(
        rest, loader(root), ckpt_path=save.best_model_path or save.last_model_path
    )
    assert len(whole.seen) == 110 and first.seen == whole.seen[:40]
    assert rest.seen == whole.seen[40:]  # the remaining 7 batches, none again, none lost
