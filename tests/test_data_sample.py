"""scripts/make_sample.py: stratified, seeded cuts of a MedMNIST-format npz."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sslpath.data.npz import read_npz
from sslpath.data.splits import SPLITS

from factories import Marker, write_npz

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_sample.py"
SHARES = np.array([0.5, 0.3, 0.2])


@pytest.fixture(scope="module")
def make_sample():
    spec = importlib.util.spec_from_file_location("make_sample", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def source(tmp_path) -> Path:
    """Imbalanced classes (50/30/20 %), each image tagged by its split and index in pixel 0."""
    rng = np.random.default_rng(1)
    arrays = {}
    for tag, (split, n) in enumerate(zip(SPLITS, (600, 200, 100))):
        labels = rng.permutation(np.repeat([0, 1, 2], (SHARES * n).astype(int)))
        images = np.zeros((n, 4, 4, 3), np.uint8)
        images[:, 0, 0, 0], images[:, 0, 0, 1], images[:, 0, 0, 2] = tag, np.arange(n) // 256, np.arange(n) % 256
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None].astype(np.uint8)
    path = tmp_path / "source.npz"
    np.savez(path, **arrays, train_source_index=np.arange(600))
    return path


def origin(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source split (0 train, 1 val, 2 test) and index of each tile, read back from its pixel 0."""
    pixel = images[:, 0, 0].astype(int)
    return pixel[:, 0], pixel[:, 1] * 256 + pixel[:, 2]


def assert_stratified(labels: np.ndarray, pool: np.ndarray, n: int) -> None:
    """n labels, each class within two images of its share of the pool they were drawn from."""
    shares = np.bincount(pool.reshape(-1), minlength=3) / pool.size
    assert len(labels) == n
    assert np.abs(np.bincount(labels.reshape(-1), minlength=3) - shares * n).max() <= 2


def test_per_split_cut_keeps_official_splits(tmp_path, source, make_sample):
    make_sample([str(source), str(tmp_path / "out.npz"), "--counts", "60,20,10", "--seed", "3"])
    out, src = np.load(tmp_path / "out.npz"), np.load(source)
    assert sorted(out.files) == sorted(f"{s}_{k}" for s in SPLITS for k in ("images", "labels", "source_index"))
    for tag, (split, n) in enumerate(zip(SPLITS, (60, 20, 10))):
        assert_stratified(out[f"{split}_labels"], src[f"{split}_labels"], n)
        came_from, index = origin(out[f"{split}_images"])
        assert (came_from == tag).all() and np.array_equal(index, out[f"{split}_source_index"])
        assert np.array_equal(out[f"{split}_labels"], src[f"{split}_labels"][index])
    splits = read_npz(tmp_path / "out.npz", num_classes=3)  # a valid data file
    assert [len(splits[s]) for s in SPLITS] == [60, 20, 10]


def test_cut_from_first_images_of_one_split(tmp_path, source, make_sample):
    # the shape of our shared sample's cut: first 1,000 train images, re-split 701/100/199
    make_sample([str(source), str(tmp_path / "out.npz"), "--from-split", "train", "--first", "300", "--counts", "210,30,60"])
    out, pool = np.load(tmp_path / "out.npz"), np.load(source)["train_labels"][:300]
    taken = []
    for split, n in zip(SPLITS, (210, 30, 60)):
        came_from, index = origin(out[f"{split}_images"])
        assert (came_from == 0).all() and np.array_equal(index, out[f"{split}_source_index"])
        assert_stratified(out[f"{split}_labels"], pool, n)
        taken.append(index)
    assert sorted(np.concatenate(taken).tolist()) == list(range(300))  # disjoint, all from the first 300


def test_cut_is_seeded(tmp_path, source, make_sample):
    def cut(seed, name):
        make_sample([str(source), str(tmp_path / name), "--counts", "60,20,10", "--seed", str(seed)])
        return np.load(tmp_path / name)["train_source_index"]

    assert np.array_equal(cut(0, "a.npz"), cut(0, "b.npz"))
    assert not np.array_equal(cut(0, "a.npz"), cut(1, "c.npz"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--counts", "601,1,1"], "asks for 601 images from the train split, which offers 600"),
        (["--from-split", "val", "--first", "50", "--counts", "30,10,11"], r"offers 50 \(--first\)"),
        (["--counts", "1,2"], "expected 3 positive"),
        (["--counts", "5,5,5", "--first", "0"], "expected 1 positive"),
    ],
)
def test_bad_requests_are_one_line_errors(tmp_path, source, make_sample, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        make_sample([str(source), str(tmp_path / "out.npz"), *args])
    assert exit_.value.code == 2 and re.search(f"make_sample: error: .*{message}", capsys.readouterr().err)
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.cli
def test_cli_exits_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "absent.npz"), str(tmp_path / "out.npz"), "--counts", "1,1,1"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"make_sample: error: {tmp_path / 'absent.npz'} not found")


def test_hostile_source_is_refused(tmp_path, make_sample, capsys):
    marker = tmp_path / "unpickled"
    path = write_npz(tmp_path / "bad.npz", val_images=np.array([Marker(marker)] * 6, dtype=object))
    with pytest.raises(SystemExit) as exit_:
        make_sample([str(path), str(tmp_path / "out.npz"), "--counts", "5,5,5"])
    assert exit_.value.code == 2 and "Python objects" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.npz").exists()


def test_sample_of_the_real_sample(tmp_path, sample_npz, make_sample):
    make_sample([str(sample_npz), str(tmp_path / "out.npz"), "--from-split", "train", "--first", "500", "--counts", "350,50,100"])
    out, src = np.load(tmp_path / "out.npz"), np.load(sample_npz)
    for split in SPLITS:
        index = out[f"{split}_source_index"]
        assert index.max() < 500 and np.array_equal(out[f"{split}_images"], src["train_images"][index])
    assert np.bincount(out["test_labels"].reshape(-1), minlength=9).min() >= 5
