import functools
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from sslpath import data
from sslpath.errors import UserError


def write_npz(path: Path, counts=(20, 6, 6), size=8, num_classes=3, **override):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(data.SPLITS, counts):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % num_classes).astype(np.uint8)[:, None]
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def test_custom_npz_any_split_sizes(tmp_path):
    splits = data.read_npz(write_npz(tmp_path / "x.npz", counts=(13, 5, 7)), num_classes=3)
    assert [len(splits[s]) for s in data.SPLITS] == [13, 5, 7]
    assert splits["train"].images.shape == (13, 3, 8, 8) and splits["train"].images.dtype == torch.uint8
    assert splits["train"].labels.dtype == torch.int64


@pytest.mark.parametrize(
    "override, message",
    [
        ({"val_labels": None}, "lacks the key"),
        ({"train_images": np.zeros((20, 8, 8, 3), np.float32)}, "dtype float32"),
        ({"train_images": np.zeros((20, 8, 8), np.uint8)}, "shape"),
        ({"test_labels": np.full((6, 1), 7, np.uint8)}, r"\[0, 2\]"),
        ({"val_images": np.zeros((0, 8, 8, 3), np.uint8), "val_labels": np.zeros((0, 1), np.uint8)}, "empty"),
    ],
)
def test_bad_npz_contents_are_user_errors(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        data.read_npz(write_npz(tmp_path / "x.npz", **override), num_classes=3)


def test_not_an_npz_and_truncated(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(UserError, match="not a readable .npz"):
        data.read_npz(tmp_path / "text.npz", 3)
    good = write_npz(tmp_path / "good.npz")
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated"):
        data.read_npz(tmp_path / "cut.npz", 3)


def test_synthetic_is_seeded_and_learnable_shape():
    a = data.synthetic_splits(16, 9, {"train": 27, "val": 9, "test": 9}, seed=3)
    b = data.synthetic_splits(16, 9, {"train": 27, "val": 9, "test": 9}, seed=3)
    c = data.synthetic_splits(16, 9, {"train": 27, "val": 9, "test": 9}, seed=4)
    assert torch.equal(a["train"].images, b["train"].images)
    assert not torch.equal(a["train"].images, c["train"].images)
    assert sorted(a["train"].labels.tolist()) == sorted(list(range(9)) * 3)
    # classes differ in colour: per-class mean colours are far apart relative to within-class spread
    imgs, labels = a["train"].images.float(), a["train"].labels
    means = torch.stack([imgs[labels == c].mean(dim=(0, 2, 3)) for c in range(9)])
    assert torch.cdist(means, means).add(torch.eye(9) * 1e3).min() > 10


def test_stratified_subset_keeps_every_class():
    labels = torch.arange(100) % 4
    keep = data.stratified_subset(labels, 0.2, 4, seed=0)
    assert torch.bincount(labels[keep]).tolist() == [5, 5, 5, 5]
    assert torch.equal(keep, data.stratified_subset(labels, 0.2, 4, seed=0))
    assert not torch.equal(keep, data.stratified_subset(labels, 0.2, 4, seed=1))
    with pytest.raises(UserError, match="keeps no label of class"):
        data.stratified_subset(labels, 0.01, 4, seed=0)
    with pytest.raises(UserError, match=r"outside \(0, 1\]"):
        data.stratified_subset(labels, 1.5, 4, seed=0)


def test_batch_loader_covers_split_once_and_reshuffles_by_epoch():
    split = data.Split(torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 3, 2, 2), torch.arange(50))
    epoch = {"n": 0}
    train = data.BatchLoader(split, 16, shuffle=True, seed=1, epoch=lambda: epoch["n"])
    first = torch.cat([y for _, y in train])
    assert len(train) == 3 and len(first) == 48 and len(set(first.tolist())) == 48
    epoch["n"] = 1
    assert not torch.equal(first, torch.cat([y for _, y in train]))
    epoch["n"] = 0
    assert torch.equal(first, torch.cat([y for _, y in train]))  # same epoch, same order: resumable
    evaluation = data.BatchLoader(split, 16, shuffle=False)
    assert torch.equal(torch.cat([y for _, y in evaluation]), torch.arange(50))
    # two DDP ranks: disjoint halves of the same permutation
    ranks = [data.BatchLoader(split, 8, shuffle=True, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = [set(torch.cat([y for _, y in r]).tolist()) for r in ranks]
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 24


def test_ssl_keeps_unlabelled_images_with_masked_labels():
    kwargs = dict(size=8, num_classes=3, train_count=30, val_count=6, test_count=6, batch_size=8, eval_batch_size=8, label_fraction=0.2)
    ssl = data.SyntheticDataModule(keep_unlabelled=True, **kwargs)
    sup = data.SyntheticDataModule(**kwargs)
    ssl.setup("fit"), sup.setup("fit")
    assert len(ssl.splits["train"]) == 30 and int((ssl.splits["train"].labels >= 0).sum()) == 6
    assert len(sup.splits["train"]) == 6
    assert torch.equal(ssl.splits["train"].labels[ssl.splits["train"].labels >= 0], sup.splits["train"].labels)


def test_resize_custom_file(tmp_path):
    dm = data.MedMNISTDataModule(path=str(write_npz(tmp_path / "x.npz")), size=12, num_classes=3, batch_size=4, eval_batch_size=4)
    dm.setup("fit")
    assert dm.splits["test"].images.shape == (6, 3, 12, 12)


def test_missing_official_file_names_path_url_and_alternatives(tmp_path):
    dm = data.MedMNISTDataModule(root=str(tmp_path), num_classes=9, batch_size=4, eval_batch_size=4)
    with pytest.raises(UserError) as err:
        dm.prepare_data()
    text = str(err.value)
    assert str(tmp_path / "pathmnist.npz") in text and "zenodo.org" in text
    assert "data.download=true" in text and "data.path=" in text and "data=synthetic" in text
    assert dm.class_names[0] == "adipose" and len(dm.class_names) == 9


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_md5(tmp_path, http_server):
    root, url = http_server
    source = write_npz(root / "pathmnist.npz", num_classes=9)
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    dest_dir = tmp_path / "data"
    common = dict(root=str(dest_dir), download=True, url=f"{url}/pathmnist.npz", num_classes=9, batch_size=4, eval_batch_size=4)

    bad = data.MedMNISTDataModule(md5="0" * 32, **common)
    with pytest.raises(UserError, match="MD5"):
        bad.prepare_data()
    assert list(dest_dir.iterdir()) == []  # nothing half-written, no temp left

    good = data.MedMNISTDataModule(md5=md5, **common)
    good.setup("fit")
    assert (dest_dir / "pathmnist.npz").read_bytes() == source.read_bytes()
    assert len(good.splits["train"]) == 20


def test_download_unreachable_is_user_error(tmp_path):
    dm = data.MedMNISTDataModule(root=str(tmp_path), download=True, url="http://127.0.0.1:9/none.npz", num_classes=9, batch_size=4, eval_batch_size=4)
    with pytest.raises(UserError, match="could not download"):
        dm.prepare_data()
    assert list(tmp_path.iterdir()) == []


def test_real_sample(sample_npz):
    dm = data.MedMNISTDataModule(path=str(sample_npz), num_classes=9, batch_size=64, eval_batch_size=256)
    dm.setup("fit")
    assert [len(dm.splits[s]) for s in data.SPLITS] == [701, 100, 199]
    assert dm.splits["train"].images.shape[1:] == (3, 28, 28)
    assert torch.bincount(dm.splits["test"].labels, minlength=9).tolist() == [21, 24, 21, 28, 18, 29, 16, 18, 24]
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 3, 28, 28) and images.dtype == torch.uint8 and labels.max() < 9
    assert dm.class_names[3] == "lymphocytes"
