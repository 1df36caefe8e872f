import hashlib
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from sslpath.core.errors import UserError
from sslpath.data.datamodule import MedMNISTDataModule, SyntheticDataModule
from sslpath.data.download import class_names, flag_info
from sslpath.data.loader import BatchLoader
from sslpath.data.npz import read_npz
from sslpath.data.preprocess import to_tiles
from sslpath.data.splits import SPLITS, Split, stratified_subset
from sslpath.data.synthetic import synthetic_splits

from factories import SMALL, Marker, compose_cfg, data_files, split_arrays, write_npz


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npy_header_only(shape: tuple[int, ...]) -> bytes:
    """A .npy member that declares a uint8 array of `shape` but holds only a few bytes of it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(16)


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


def test_custom_npz_any_split_sizes(tmp_path):
    splits = read_npz(write_npz(tmp_path / "x.npz", counts=(13, 5, 7)), num_classes=3)
    assert [len(splits[s]) for s in SPLITS] == [13, 5, 7]
    assert splits["train"].images.shape == (13, 3, 8, 8) and splits["train"].images.dtype == torch.uint8
    assert splits["train"].labels.dtype == torch.int64


@pytest.mark.parametrize(
    "override, message",
    [
        ({"val_labels": None}, "lacks the key"),
        ({"train_images": np.zeros((20, 8, 8, 3), np.float32)}, "dtype float32"),
        ({"train_images": np.zeros((20, 8, 8, 2), np.uint8)}, "shape"),
        ({"train_images": np.zeros((20, 8, 6, 3), np.uint8)}, "square"),
        ({"train_labels": np.zeros((19, 1), np.uint8)}, r"\(20, 1\) integer"),
        ({"test_labels": np.full((6, 1), 7, np.uint8)}, r"\[0, 2\]"),
        ({"val_images": np.zeros((0, 8, 8, 3), np.uint8), "val_labels": np.zeros((0, 1), np.uint8)}, "empty"),
    ],
)
def test_bad_npz_contents_are_user_errors(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        read_npz(write_npz(tmp_path / "x.npz", **override), num_classes=3)


def test_not_an_npz_and_truncated(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(UserError, match="not a readable .npz"):
        read_npz(tmp_path / "text.npz", 3)
    good = write_npz(tmp_path / "good.npz")
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated"):
        read_npz(tmp_path / "cut.npz", 3)


def test_member_cut_short_after_a_valid_header_is_user_error(tmp_path):
    members = {f"{k}.npy": npy_bytes(v) for k, v in split_arrays().items()}
    members["train_images.npy"] = npy_header_only((20, 8, 8, 3))  # header promises 3840 bytes, holds 16
    with pytest.raises(UserError, match="could not read train_images.*truncated or corrupt"):
        read_npz(write_zip(tmp_path / "short.npz", members), 3)


def test_huge_declared_array_is_refused_before_allocating(tmp_path):
    members = {f"{k}.npy": npy_bytes(v) for k, v in split_arrays().items()}
    members["train_images.npy"] = npy_header_only((10**9, 28, 28, 3))  # 2.2 TiB declared, 16 bytes held
    members["train_labels.npy"] = npy_header_only((10**9, 1))
    path = write_zip(tmp_path / "huge.npz", members)
    start = time.perf_counter()
    with pytest.raises(UserError, match="GiB to load and convert, more than half of this machine's memory"):
        read_npz(path, 3)
    assert time.perf_counter() - start < 1


def test_resize_target_counts_towards_memory(tmp_path, monkeypatch):
    path = write_npz(tmp_path / "x.npz")  # 32 tiles of 8×8: ~20 KiB to load, ~3 MiB at 224 px
    monkeypatch.setattr("sslpath.data.npz.memory_budget", lambda: 1 << 20)
    assert len(read_npz(path, 3)["train"]) == 20
    with pytest.raises(UserError, match="memory"):
        read_npz(path, 3, size=224)


def test_unused_huge_member_is_never_read(tmp_path):
    members = {f"{k}.npy": npy_bytes(v) for k, v in split_arrays().items()}
    members["junk.npy"] = npy_header_only((10**12,))
    members["notes.txt"] = b"not an array"
    splits = read_npz(write_zip(tmp_path / "junk.npz", members), 3)
    assert len(splits["train"]) == 20


def test_pickled_member_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    path = write_npz(tmp_path / "pickle.npz", train_labels=np.array([Marker(marker)] * 20, dtype=object)[:, None])
    with pytest.raises(UserError, match="Python objects"):
        read_npz(path, 3)
    assert not marker.exists()
    np.load(path, allow_pickle=True)["train_labels"]  # the file really is hostile: unpickling runs the payload
    assert marker.exists()


def test_grayscale_tiles_become_rgb(tmp_path):
    for channels in (0, 1):  # N×H×W and N×H×W×1
        path = write_npz(tmp_path / f"gray{channels}.npz", channels=channels)
        images = read_npz(path, 3)["val"].images
        stored = np.load(path)["val_images"].reshape(6, 8, 8)
        assert images.shape == (6, 3, 8, 8)
        for c in range(3):
            assert np.array_equal(images[:, c].numpy(), stored)


def test_multi_label_labels_are_refused(tmp_path):
    labels = np.zeros((20, 14), np.uint8)
    with pytest.raises(UserError, match="14 labels per image.*multi-label.*ChestMNIST"):
        read_npz(write_npz(tmp_path / "chest.npz", train_labels=labels), 3)


def test_to_tiles_same_for_numpy_nhwc_and_tensor_nchw():
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    nchw = torch.from_numpy(nhwc).permute(0, 3, 1, 2)
    small = to_tiles(nhwc, 8)
    assert small.shape == (5, 3, 8, 8) and small.dtype == torch.uint8
    assert torch.equal(small, to_tiles(nchw, 8))
    assert torch.equal(to_tiles(nhwc, 32), to_tiles(nchw, 32))
    assert torch.equal(to_tiles(nhwc, 20), nchw)  # same size: the pixels as stored
    assert torch.equal(to_tiles(nchw, 20), nchw)
    # antialiased: shrinking a fine checkerboard gives its mean grey, not aliased black or white
    board = np.indices((32, 32)).sum(0) % 2 * 255
    assert (to_tiles(board.astype(np.uint8)[None], 8).float() - 127.5).abs().max() < 2


def test_synthetic_is_seeded_and_learnable_shape():
    a = synthetic_splits(16, 9, {"train": 27, "val": 9, "test": 9}, seed=3)
    b = synthetic_splits(16, 9, {"train": 27, "val": 9, "test": 9}, seed=3)
    c = synthetic_splits(16, 9, {"train": 27, "val": 9, "test": 9}, seed=4)
    assert torch.equal(a["train"].images, b["train"].images)
    assert not torch.equal(a["train"].images, c["train"].images)
    assert sorted(a["train"].labels.tolist()) == sorted(list(range(9)) * 3)
    # classes differ in colour: per-class mean colours are far apart relative to within-class spread
    imgs, labels = a["train"].images.float(), a["train"].labels
    means = torch.stack([imgs[labels == c].mean(dim=(0, 2, 3)) for c in range(9)])
    assert torch.cdist(means, means).add(torch.eye(9) * 1e3).min() > 10


def test_stratified_subset_keeps_every_class():
    labels = torch.arange(100) % 4
    keep = stratified_subset(labels, 0.2, 4, seed=0)
    assert torch.bincount(labels[keep]).tolist() == [5, 5, 5, 5]
    assert torch.equal(keep, stratified_subset(labels, 0.2, 4, seed=0))
    assert not torch.equal(keep, stratified_subset(labels, 0.2, 4, seed=1))
    with pytest.raises(UserError, match="keeps no label of class"):
        stratified_subset(labels, 0.01, 4, seed=0)
    with pytest.raises(UserError, match=r"outside \(0, 1\]"):
        stratified_subset(labels, 1.5, 4, seed=0)


def test_batch_loader_covers_split_once_and_reshuffles_by_epoch():
    split = Split(torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 3, 2, 2), torch.arange(50))
    epoch = {"n": 0}
    train = BatchLoader(split, 16, shuffle=True, seed=1, epoch=lambda: epoch["n"])
    first = torch.cat([y for _, y in train])
    assert len(train) == 3 and len(first) == 48 and len(set(first.tolist())) == 48
    epoch["n"] = 1
    assert not torch.equal(first, torch.cat([y for _, y in train]))
    epoch["n"] = 0
    assert torch.equal(first, torch.cat([y for _, y in train]))  # same epoch, same order: resumable
    evaluation = BatchLoader(split, 16, shuffle=False)
    assert torch.equal(torch.cat([y for _, y in evaluation]), torch.arange(50))
    # two DDP ranks: disjoint halves of the same permutation
    ranks = [BatchLoader(split, 8, shuffle=True, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = [set(torch.cat([y for _, y in r]).tolist()) for r in ranks]
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 24


def test_ssl_keeps_unlabelled_images_with_masked_labels():
    kwargs = dict(
        size=8, num_classes=3, train_count=30, val_count=6, test_count=6, batch_size=8, eval_batch_size=8, label_fraction=0.2
    )
    ssl = SyntheticDataModule(keep_unlabelled=True, **kwargs)
    sup = SyntheticDataModule(**kwargs)
    ssl.setup("fit"), sup.setup("fit")
    assert len(ssl.splits["train"]) == 30 and int((ssl.splits["train"].labels >= 0).sum()) == 6
    assert len(sup.splits["train"]) == 6
    assert torch.equal(ssl.splits["train"].labels[ssl.splits["train"].labels >= 0], sup.splits["train"].labels)


def test_resize_custom_file(tmp_path):
    path = write_npz(tmp_path / "x.npz")
    dm = MedMNISTDataModule(path=str(path), size=12, num_classes=3, **SMALL)
    dm.setup("fit")
    assert dm.splits["test"].images.shape == (6, 3, 12, 12)
    assert torch.equal(dm.splits["test"].images, to_tiles(np.load(path)["test_images"], 12))
    assert dm.class_names == ["class 0", "class 1", "class 2"]  # not PathMNIST's 9 names


def test_missing_official_file_names_path_url_and_alternatives(tmp_path):
    dm = MedMNISTDataModule(root=str(tmp_path), num_classes=9, **SMALL)
    with pytest.raises(UserError) as err:
        dm.prepare_data()
    text = str(err.value)
    assert str(tmp_path / "pathmnist.npz") in text and "zenodo.org" in text
    assert "data.download=false forbids" in text and "data.download=auto" in text
    assert "data.path=" in text and "data=synthetic" in text
    assert dm.class_names[0] == "adipose" and len(dm.class_names) == 9


# ----------------------------------------------------------------------------------------------
# Other MedMNIST flags (data=medmnist data.flag=…)


def test_flag_info_refuses_multi_label_3d_and_unknown_flags():
    assert flag_info("bloodmnist")["task"] == "multi-class"
    with pytest.raises(UserError, match="chestmnist is a multi-label, binary-class task.*14 labels per image.*bloodmnist"):
        flag_info("chestmnist")
    with pytest.raises(UserError, match="organmnist3d is a 3D MedMNIST set.*organmnist"):
        flag_info("organmnist3d")
    with pytest.raises(UserError, match="unknown MedMNIST flag data.flag=pathmnits") as err:
        flag_info("pathmnits")
    listed = str(err.value).split("choose one of ")[1]
    assert "pathmnist" in listed and "bloodmnist" in listed
    assert "chestmnist" not in listed and "3d" not in listed


def test_other_flag_takes_classes_from_medmnist_info(tmp_path):
    dm = MedMNISTDataModule(flag="bloodmnist", root=str(tmp_path), **SMALL)
    assert dm.num_classes == 8 and dm.class_names[0] == "basophil" and dm.class_names[7] == "platelet"
    with pytest.raises(UserError) as err:
        dm.prepare_data()
    text = str(err.value)
    assert f"bloodmnist not found at {tmp_path / 'bloodmnist.npz'}" in text and "zenodo.org" in text
    assert "data.download=auto" in text and "data.path=FILE" in text and "data=synthetic" in text


def test_data_configs_compose_and_instantiate(tmp_path):
    cfg = compose_cfg(tmp_path, ["data=medmnist", "data.flag=bloodmnist", f"data.root={tmp_path}"], tiny=False)
    dm = instantiate(cfg.data)
    assert isinstance(dm, MedMNISTDataModule) and dm.num_classes == 8 and dm.file == tmp_path / "bloodmnist.npz"
    assert dm.seed == cfg.seed
    cfg = compose_cfg(tmp_path, ["data=folder"], tiny=False)
    assert cfg.data.cache_dir.endswith("/folder_cache") and cfg.data.size == 28
    with pytest.raises(Exception, match="data.dir"):  # dir: ??? must be given
        instantiate(cfg.data)


def test_download_verifies_md5(tmp_path, file_server):
    source = write_npz(file_server.root / "pathmnist.npz", num_classes=9)
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    dest_dir = tmp_path / "data"
    common = dict(root=str(dest_dir), download=True, url=file_server.url("pathmnist.npz"), num_classes=9, **SMALL)

    bad = MedMNISTDataModule(md5="0" * 32, **common)
    with pytest.raises(UserError, match="MD5"):
        bad.prepare_data()
    assert data_files(dest_dir) == []  # nothing half-written, no temp left

    good = MedMNISTDataModule(md5=md5, **common)
    good.setup("fit")
    assert (dest_dir / "pathmnist.npz").read_bytes() == source.read_bytes()
    assert len(good.splits["train"]) == 20


@pytest.mark.parametrize("channels", [0, 3], ids=["grayscale", "rgb"])
def test_download_other_flag(tmp_path, file_server, channels):
    source = write_npz(file_server.root / "blood.npz", counts=(24, 8, 8), size=28, num_classes=8, channels=channels)
    dm = MedMNISTDataModule(
        flag="bloodmnist",
        root=str(tmp_path / "data"),
        download=True,
        url=file_server.url("blood.npz"),
        md5=hashlib.md5(source.read_bytes()).hexdigest(),
        **SMALL,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert (tmp_path / "data" / "bloodmnist.npz").read_bytes() == source.read_bytes()
    assert dm.num_classes == 8 and dm.class_names == class_names("bloodmnist")
    assert torch.bincount(dm.splits["train"].labels).tolist() == [3] * 8
    assert torch.equal(dm.splits["val"].images, to_tiles(np.load(source)["val_images"], 28))
    assert dm.splits["val"].images.shape == (8, 3, 28, 28)


def test_download_missing_file_and_bad_url_are_user_errors(tmp_path, file_server):
    for bad_url in (file_server.url("absent.npz"), "not a url"):
        dm = MedMNISTDataModule(root=str(tmp_path / "data"), download=True, url=bad_url, num_classes=9, **SMALL)
        with pytest.raises(UserError, match="tried to download it from .* and could not"):
            dm.prepare_data()
    assert data_files(tmp_path / "data") == []


def test_download_unreachable_is_user_error(tmp_path):
    dm = MedMNISTDataModule(root=str(tmp_path), download=True, url="http://127.0.0.1:9/none.npz", num_classes=9, **SMALL)
    with pytest.raises(UserError, match="tried to download it from .* and could not"):
        dm.prepare_data()
    assert data_files(tmp_path) == []


def test_real_sample(sample_npz):
    dm = MedMNISTDataModule(path=str(sample_npz), num_classes=9, batch_size=64, eval_batch_size=256)
    dm.setup("fit")
    assert [len(dm.splits[s]) for s in SPLITS] == [701, 100, 199]
    assert dm.splits["train"].images.shape[1:] == (3, 28, 28)
    assert torch.bincount(dm.splits["test"].labels, minlength=9).tolist() == [21, 24, 21, 28, 18, 29, 16, 18, 24]
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 3, 28, 28) and images.dtype == torch.uint8 and labels.max() < 9
    assert dm.class_names[3] == "lymphocytes"
