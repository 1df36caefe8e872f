"""data=folder: class subfolders of any-size images -> cached, split, labelled tiles."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from sslpath.core.errors import UserError
from sslpath.core.files import read_json
from sslpath.data.datamodule import FolderDataModule
from sslpath.data.images import read_image
from sslpath.data.splits import SPLITS

from factories import COLOURS, compose_cfg, datamodule, make_tiles


def corrupt(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 300, dtype=np.uint8).tobytes())
    return path


def colour_labels(images: torch.Tensor) -> list[int]:
    """The class each tile's mean colour is closest to: labels must agree with pixels."""
    means = images.float().mean(dim=(2, 3))
    refs = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
    return torch.cdist(means, refs).argmin(dim=1).tolist()


@pytest.fixture
def tiles(tmp_path) -> Path:
    root = tmp_path / "tiles"
    make_tiles(root, {"adipose": 10, "mucus": 9, "tumour": 6})
    corrupt(root / "mucus" / "bad.png")
    (root / "mucus" / "notes.txt").write_text("not an image: ignored")
    return root


def test_read_image_native_size_rgb(tmp_path):
    path = tmp_path / "x.png"
    Image.new("L", (40, 32), 7).save(path)
    image = read_image(path)
    assert image.shape == (32, 40, 3) and image.dtype == np.uint8 and (image == 7).all()


def test_folder_splits_labels_and_unreadable_file(tmp_path, tiles, caplog):
    caplog.set_level(logging.INFO)
    dm = datamodule(tiles, tmp_path / "cache")
    assert dm.class_names == ["adipose", "mucus", "tumour"] and dm.num_classes == 3
    dm.setup("fit")
    per_class = {s: torch.bincount(dm.splits[s].labels, minlength=3).tolist() for s in SPLITS}
    # per class: round(0.2 n) (at least 1) to val and to test, the rest to train; 9 mucus tiles are readable
    assert per_class == {"train": [6, 5, 4], "val": [2, 2, 1], "test": [2, 2, 1]}
    for split in SPLITS:
        images = dm.splits[split].images
        assert images.shape[1:] == (3, 16, 16) and images.dtype == torch.uint8
        assert colour_labels(images) == dm.splits[split].labels.tolist()
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "skipped 1 unreadable" in warning and str(tiles / "mucus" / "bad.png") in warning
    sidecar = read_json(dm.tiles.sidecar)
    assert [s["file"] for s in sidecar["skipped"]] == [str(tiles / "mucus" / "bad.png")]
    assert sidecar["class_names"] == ["adipose", "mucus", "tumour"]
    assert dm.tiles.cache_file.is_file() and dm.tiles.sidecar.with_suffix(".npz") == dm.tiles.cache_file
    assert [p.name for p in dm.tiles.cache_file.parent.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_cache_reused_for_unchanged_folder_and_rebuilt_when_it_changes(tmp_path, tiles, caplog, monkeypatch):
    first = datamodule(tiles, tmp_path / "cache")
    first.setup("fit")

    decoded = []

    def counting_read_image(path, *args):
        decoded.append(path)
        return read_image(path, *args)

    monkeypatch.setattr("sslpath.data.tile_files.read_image", counting_read_image)
    caplog.set_level(logging.INFO)
    again = datamodule(tiles, tmp_path / "cache")
    again.prepare_data()
    again.setup("fit")
    assert decoded == []
    assert any("reusing cached tiles" in r.getMessage() for r in caplog.records)
    assert any("bad.png" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)  # still named
    for split in SPLITS:
        assert torch.equal(again.splits[split].images, first.splits[split].images)
        assert torch.equal(again.splits[split].labels, first.splits[split].labels)

    # every setting that changes the tiles, and any change to the files' bytes, gives another cache
    keys = {first.tiles.cache_file}
    for changed in (dict(seed=1), dict(size=12), dict(val_fraction=0.3)):
        keys.add(datamodule(tiles, tmp_path / "cache", **changed).tiles.cache_file)
    tile = tiles / "adipose" / "tile3.bmp"  # uncompressed: a pixel can change in place
    stat = tile.stat()
    os.utime(tile, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, bytes unchanged: the same tiles
    assert datamodule(tiles, tmp_path / "cache").tiles.cache_file == first.tiles.cache_file
    data = bytearray(tile.read_bytes())
    data[-1] ^= 0xFF
    tile.write_bytes(data)  # rewritten with the same size and mtime
    os.utime(tile, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    keys.add(datamodule(tiles, tmp_path / "cache").tiles.cache_file)
    assert len(keys) == 5
    datamodule(tiles, tmp_path / "cache").setup("fit")  # the rewritten folder is converted anew
    assert len(decoded) == 26


def test_split_is_seeded(tmp_path, tiles):
    def val_images(seed):
        dm = datamodule(tiles, tmp_path / "cache", seed=seed)
        dm.setup("fit")
        return dm.splits["val"].images

    assert torch.equal(val_images(0), val_images(0))
    assert not torch.equal(val_images(0), val_images(1))


def test_given_train_val_test_folders_are_used_as_given(tmp_path):
    root = tmp_path / "tiles"
    make_tiles(root / "train", {"adipose": 4, "tumour": 3})
    make_tiles(root / "val", {"adipose": 1, "tumour": 2}, start=10)
    make_tiles(root / "test", {"adipose": 2}, start=20)
    (root / "test" / "tumour").mkdir()  # an empty class folder is allowed outside train/
    dm = datamodule(root, tmp_path / "cache", val_fraction=0.9)  # fractions do not apply
    assert dm.class_names == ["adipose", "tumour"]
    dm.setup("fit")
    assert {s: dm.splits[s].labels.tolist() for s in SPLITS} == {"train": [0] * 4 + [1] * 3, "val": [0, 1, 1], "test": [0, 0]}
    assert colour_labels(dm.splits["val"].images) == [0, 2, 2]  # adipose red, tumour blue


def test_given_splits_must_agree(tmp_path):
    root = tmp_path / "tiles"
    make_tiles(root / "train", {"adipose": 3, "tumour": 3})
    make_tiles(root / "val", {"adipose": 1, "mucus": 1})
    with pytest.raises(UserError, match=r"split layout needs exactly train/, val/ and test/"):
        datamodule(root, tmp_path / "cache")
    make_tiles(root / "test", {"adipose": 1, "tumour": 1})
    with pytest.raises(
        UserError, match=r"val has the class folders \['adipose', 'mucus'\] but train/ has \['adipose', 'tumour'\]"
    ):
        datamodule(root, tmp_path / "cache")


@pytest.mark.parametrize("keep", [True, False])
def test_unlabeled_dir_joins_training_only_for_ssl(tmp_path, tiles, keep):
    extra = tmp_path / "extra"
    make_tiles(extra / "slide1", {"mucus": 3}, start=50)  # other tiles than data.dir's (same bytes are left out)
    corrupt(extra / "slide2" / "broken.tif", seed=1)
    dm = datamodule(tiles, tmp_path / "cache", unlabeled_dir=str(extra), keep_unlabelled=keep, label_fraction=0.5)
    dm.setup("fit")
    train = dm.splits["train"]
    labelled = int((train.labels >= 0).sum())
    if keep:
        assert len(train) == 15 + 3 and labelled == 7  # half of each class's 6, 5, 4 labels: 3 + 2 + 2
        assert colour_labels(train.images[15:]) == [1, 1, 1] and (train.labels[15:] == -1).all()
    else:
        assert len(train) == labelled == 7
    skipped = [s["file"] for s in read_json(dm.tiles.sidecar)["skipped"]]
    assert skipped == [str(tiles / "mucus" / "bad.png"), str(extra / "slide2" / "broken.tif")]
    assert [len(dm.splits[s]) for s in ("val", "test")] == [5, 5]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda root: None, "is not a folder"),
        (lambda root: root.mkdir(), r"holds 0 class subfolder\(s\) \[\]; a classifier needs at least two"),
        (lambda root: root.mkdir() or Image.new("RGB", (8, 8)).save(root / "loose.png"), r"holds 0 class subfolder"),
        (lambda root: make_tiles(root, {"adipose": 3}), r"holds 1 class subfolder\(s\) \['adipose'\]"),
        (
            lambda root: make_tiles(root, {"adipose": 3}) or (root / "tumour").mkdir(),
            r"class folder\(s\) \['tumour'\].*hold no image files",
        ),
        (lambda root: make_tiles(root, {"adipose": 3, "tumour": 2}), "class 'tumour' has 2 readable.*at least 3"),
        (lambda root: make_tiles(root, {"adipose": 3}) or corrupt(root / "tumour" / "x.png"), r"\['tumour'\].*no readable image"),
    ],
    ids=["missing", "empty", "no-class-folders", "one-class", "empty-class", "too-few", "all-unreadable"],
)
def test_bad_folders_are_user_errors(tmp_path, build, message):
    root = tmp_path / "tiles"
    build(root)
    with pytest.raises(UserError, match=message):
        datamodule(root, tmp_path / "cache").setup("fit")
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing cached from a refused folder


def test_bad_settings_are_user_errors(tmp_path, tiles):
    with pytest.raises(UserError, match="data.num_classes=4 but .* has 3 class folders"):
        datamodule(tiles, tmp_path / "cache", num_classes=4)
    with pytest.raises(UserError, match="sum to less than 1"):
        datamodule(tiles, tmp_path / "cache", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(UserError, match="unlabeled_dir=.* holds no image files"):
        datamodule(tiles, tmp_path / "cache", unlabeled_dir=str(tmp_path / "nowhere"))
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(UserError, match="could not write the tile cache .*data.cache_dir=DIR"):
        datamodule(tiles, tmp_path / "file" / "cache").setup("fit")


def test_folder_config_instantiates(tmp_path, tiles):
    cfg = compose_cfg(tmp_path, ["data=folder", f"data.dir={tiles}", f"paths.data_dir={tmp_path}", "seed=7"], tiny=False)
    dm = instantiate(cfg.data)
    assert isinstance(dm, FolderDataModule) and dm.class_names == ["adipose", "mucus", "tumour"]
    assert dm.tiles.cache_file.parent == tmp_path / "folder_cache" and dm.seed == 7
