"""Trust, third round (data side): no network and nothing in $HOME unless a setting asks; MLflow stores that
fail clearly; test tiles never in the unlabelled pool; the split a checkpoint trained on is recorded and kept;
stage keys and the folder cache follow the data's contents; a fast dev run never makes a chain's stage."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sslpath.core.errors import UserError

from factories import COLOURS, TINY, cli_env, compose_evaluate, datamodule, make_tiles

# Variables that would hide what sslpath itself does: markers MLflow reads as "testing, no telemetry", and
# the settings this test process got when it imported sslpath.
HIDING = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "HF_HUB_DISABLE_TELEMETRY", "MPLCONFIGDIR")
HIDING += ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "DO_NOT_TRACK")

# Runs a module as `python -m` would, with every socket connection and name lookup refused and recorded.
GUARD = """
import runpy, socket, sys
log = sys.argv.pop(1)
def refuse(*args, **kwargs):
    with open(log, "a") as f:
        f.write(f"{args[1:]!r}\\n")
    raise OSError("network disabled by the test")
socket.socket.connect = socket.socket.connect_ex = refuse
socket.getaddrinfo = socket.create_connection = refuse
sys.argv.pop(0)
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_offline(tmp_path: Path, module: str, *args: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """`python -m module args` with $HOME an empty folder and no network; returns (result, home, net log)."""
    home, net = tmp_path / "home", tmp_path / "net.log"
    home.mkdir()
    env = {k: v for k, v in cli_env().items() if k not in HIDING} | {"HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-c", GUARD, str(net), module, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    return result, home, net


@pytest.mark.slow  # a whole CLI run in a fresh process: the process boundary is the point
def test_an_mlflow_run_opens_no_socket_and_writes_nothing_outside_its_paths(tmp_path):
    logs = tmp_path / "logs"
    result, home, net = run_offline(tmp_path, "sslpath.train", *TINY, "logger=mlflow", f"paths.log_dir={logs}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not net.exists(), net.read_text()  # no telemetry, no name lookup
    assert list(home.iterdir()) == []  # no ~/.config/mlflow, no matplotlib cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "logs"]  # no ./mlruns
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{logs}/mlflow.db")
    experiment = client.get_experiment_by_name("sslpath")
    assert experiment.artifact_location == (logs / "mlflow-artifacts").as_uri().removeprefix("file://")
    assert len(client.search_runs(experiment.experiment_id)) == 1


def test_a_damaged_mlflow_store_is_a_clear_error_before_training(tmp_path):
    from omegaconf import OmegaConf

    from sslpath.training.tracking import open_mlflow

    db = tmp_path / "mlflow.db"
    db.write_bytes(b"SQLite format 3\0" + bytes(range(256)) * 8)  # a header, then garbage
    node = OmegaConf.create(
        {"_target_": "lightning.pytorch.loggers.MLFlowLogger", "experiment_name": "sslpath", "tracking_uri": f"sqlite:///{db}"}
    )
    with pytest.raises(UserError, match=rf"could not open the MLflow store {db} .*Move it away.*tracking_uri=sqlite:///"):
        open_mlflow(node)


def test_keep_local_turns_telemetry_off_and_moves_matplotlibs_cache_out_of_home(monkeypatch):
    from sslpath.core.environment import keep_local

    for name in HIDING:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "0")  # a user's own setting is kept
    keep_local()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and os.environ["HF_HUB_DISABLE_TELEMETRY"] == "0"
    folder = Path(os.environ["MPLCONFIGDIR"])
    assert folder.is_dir() and not folder.is_relative_to(Path.home()) and folder.stat().st_mode & 0o077 == 0


def test_an_unreachable_mlflow_server_is_given_up_on_within_a_minute(monkeypatch):
    """MLflow's own default is 7 retries with back-off (254 s in the adversarial round); a user's value wins."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    from sslpath.core.environment import keep_local

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    keep_local()
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 2 and MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 5


@pytest.mark.slow
def test_two_runs_creating_one_mlflow_store_at_once_both_work(tmp_path):
    """Without the lock, MLflow's schema migration races and one process fails (alembic CommandError)."""
    code = (
        "import sys; from omegaconf import OmegaConf; from sslpath.training.tracking import open_mlflow; "
        "open_mlflow(OmegaConf.create({'_target_': 'lightning.pytorch.loggers.MLFlowLogger', 'experiment_name': 'sslpath', "
        f"'run_name': sys.argv[1], 'tracking_uri': 'sqlite:///{tmp_path}/logs/mlflow.db'}}))"
    )
    jobs = [
        subprocess.Popen([sys.executable, "-c", code, f"run{i}"], env=cli_env(), stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    errors = [job.communicate(timeout=300)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], errors
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/logs/mlflow.db")
    runs = client.search_runs(client.get_experiment_by_name("sslpath").experiment_id)
    assert sorted(r.info.run_name for r in runs) == ["run0", "run1"]


# --------------------------------------------------------------------------------------------
# The unlabelled pool never holds a labelled tile


def folder_module(root: Path, cache: Path, **kwargs):

    return datamodule(root, cache, **kwargs)


@pytest.fixture
def tiles(tmp_path) -> Path:

    root = tmp_path / "tiles"
    make_tiles(root, {"adipose": 6, "mucus": 5, "tumour": 5})
    return root


def pixels(images) -> set[bytes]:
    return {bytes(image.numpy().tobytes()) for image in images}


def test_unlabeled_dir_equal_to_data_dir_is_refused(tmp_path, tiles):
    with pytest.raises(UserError, match=r"every image file under data.unlabeled_dir=.* is also a labelled tile of data.dir"):
        folder_module(tiles, tmp_path / "cache", unlabeled_dir=str(tiles))


def test_labelled_tiles_under_unlabeled_dir_are_left_out_and_counted(tmp_path, tiles, caplog):
    """data.unlabeled_dir holding a link to a labelled tile and a copy of one: only the extra tiles stay."""

    pool = tmp_path / "pool"
    make_tiles(pool / "extra", {"mucus": 4}, start=100)
    (pool / "linked.png").symlink_to(next((tiles / "tumour").glob("*.png")))
    (pool / "copy.jpg").write_bytes(next((tiles / "adipose").glob("*.jpg")).read_bytes())
    dm = folder_module(tiles, tmp_path / "cache", unlabeled_dir=str(pool), keep_unlabelled=True)
    assert "left out 2 of its 6 image files that are labelled tiles" in caplog.text and "uses the other 4" in caplog.text
    dm.setup("fit")
    train = dm.splits["train"]
    unlabelled = train.images[train.labels == -1]
    assert len(unlabelled) == 4
    held_out = pixels(dm.splits["val"].images) | pixels(dm.splits["test"].images)
    assert not pixels(train.images) & held_out  # no validation or test tile is pretrained on

    inside = tiles / "tumour"  # a pool inside data.dir: a class folder's tiles
    with pytest.raises(UserError, match=r"every image file under data.unlabeled_dir=.*tumour is also a labelled tile"):
        folder_module(tiles, tmp_path / "cache", unlabeled_dir=str(inside))


# --------------------------------------------------------------------------------------------
# The folder cache is used only when its digests match


def planted_npz(path: Path, n: int = 4) -> None:
    import numpy as np

    arrays = {f"{s}_images": np.zeros((n, 16, 16, 3), np.uint8) for s in ("train", "val", "test")}
    np.savez(path, **arrays, **{f"{s}_labels": np.zeros((n, 1), np.int64) for s in ("train", "val", "test")})


def splits_of(dm) -> dict[str, tuple]:
    dm.setup("fit")
    return {s: (dm.splits[s].images.clone(), dm.splits[s].labels.clone()) for s in ("train", "val", "test")}


def same(a: dict, b: dict) -> bool:
    return all(a[s][0].equal(b[s][0]) and a[s][1].equal(b[s][1]) for s in a)


@pytest.mark.parametrize("record", ["none", "copied"])
def test_a_planted_cache_is_never_trained_on(tmp_path, tiles, caplog, record):
    import shutil

    reference = splits_of(folder_module(tiles, tmp_path / "clean"))
    dm = folder_module(tiles, tmp_path / "cache")
    dm.tiles.cache_file.parent.mkdir()
    planted_npz(dm.tiles.cache_file)
    if record == "copied":  # a record taken from a genuine cache of this folder, beside another npz
        shutil.copy(folder_module(tiles, tmp_path / "clean").tiles.sidecar, dm.tiles.sidecar)
    assert same(splits_of(dm), reference)
    problem = "has no readable record" if record == "none" else "does not match the digest its record holds"
    assert f"the tile cache {dm.tiles.cache_file} {problem}" in caplog.text and "converting" in caplog.text


def test_a_damaged_cache_is_rebuilt_and_a_forged_record_is_not_blamed_on_a_download(tmp_path, tiles, caplog):
    import json

    from sslpath.data.digest import file_digest

    reference = splits_of(folder_module(tiles, tmp_path / "cache"))
    dm = folder_module(tiles, tmp_path / "cache")
    cache = dm.tiles.cache_file
    cache.write_bytes(cache.read_bytes()[:-100])  # truncated
    assert same(splits_of(dm), reference) and "does not match the digest its record holds" in caplog.text

    cache.write_bytes(cache.read_bytes()[:-100])
    record = json.loads(dm.tiles.sidecar.read_text())
    dm.tiles.sidecar.write_text(json.dumps(record | {"npz_sha256": file_digest(cache)}))  # a record that vouches for it
    with pytest.raises(UserError, match=rf"the tile cache {cache}, converted from data.dir=.* cannot be read .*Delete ") as err:
        folder_module(tiles, tmp_path / "cache").setup("fit")
    assert "download" not in str(err.value)


def test_the_cache_follows_the_bytes_not_the_sizes_and_times(tmp_path, tiles):
    key = folder_module(tiles, tmp_path / "cache").tiles.cache_file
    tile = next((tiles / "mucus").glob("*.bmp"))
    stat = tile.stat()
    data = bytearray(tile.read_bytes())
    data[-1] ^= 0xFF  # one pixel, in place
    tile.write_bytes(data)
    os.utime(tile, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert tile.stat().st_size == stat.st_size and tile.stat().st_mtime_ns == stat.st_mtime_ns
    assert folder_module(tiles, tmp_path / "cache").tiles.cache_file != key


# --------------------------------------------------------------------------------------------
# A chain's SSL stage follows the data's bytes; a fast dev run never makes a stage


def stage_dir_for(tmp_path: Path, *overrides: str) -> Path:
    from sslpath.training import chain

    from factories import TINY_TRAINER, compose_cfg

    cfg = compose_cfg(tmp_path, ["model=finetune", *TINY_TRAINER, *overrides], tiny=False)
    return chain.stage_dir(cfg)


def rewrite_in_place(path: Path) -> None:
    """Change one byte near the end, keeping the size and the modification time."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_the_stage_key_changes_when_a_folders_tile_changes(tmp_path, tiles):
    folder = ["data=folder", f"data.dir={tiles}", "data.size=16", f"paths.data_dir={tmp_path}"]
    before = stage_dir_for(tmp_path, *folder)
    assert stage_dir_for(tmp_path, *folder) == before  # same bytes: the stage is reused
    rewrite_in_place(next((tiles / "adipose").glob("*.bmp")))
    assert stage_dir_for(tmp_path, *folder) != before


def test_the_stage_key_changes_when_an_npz_is_rewritten_in_place(tmp_path):
    import numpy as np

    npz = tmp_path / "tiles.npz"
    rng = np.random.default_rng(0)
    np.savez(
        npz,
        **{f"{s}_images": rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8) for s in ("train", "val", "test")},
        **{f"{s}_labels": np.arange(12)[:, None] % 3 for s in ("train", "val", "test")},
    )
    data = ["data=pathmnist", f"data.path={npz}", "data.size=16", "data.num_classes=3"]
    before = stage_dir_for(tmp_path, *data)
    rewrite_in_place(npz)
    assert stage_dir_for(tmp_path, *data) != before


def test_a_fast_dev_run_chain_is_refused_before_any_stage(tmp_path):
    from sslpath.training.fit import train

    from factories import compose_cfg

    cfg = compose_cfg(tmp_path, ["model=finetune", "debug=fdr"])
    with pytest.raises(UserError, match=r"debug=fdr \(trainer.fast_dev_run=True\) writes no checkpoint.*debug=limit"):
        train(cfg)
    assert not (tmp_path / "logs" / "pretrain").exists() and not (tmp_path / "pretrain").exists()


# --------------------------------------------------------------------------------------------
# A checkpoint trained on a folder records its split; evaluate re-splits with it or refuses


def bmp_tiles(root: Path, per_class: int, start: int = 0) -> None:
    """Uncompressed tiles (a pixel can change in place), every file's bytes distinct."""
    from PIL import Image

    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(start, start + per_class):
            image = Image.new("RGB", (16, 16), colour)
            image.putpixel((0, 0), (i, 0, 0))
            image.save(root / name / f"tile{i}.bmp")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> dict:
    from sslpath.training.fit import train

    from factories import TINY_TRAINER, compose_cfg

    base = tmp_path_factory.mktemp("folder_run")
    bmp_tiles(base / "tiles", 10)
    data = ["data=folder", f"data.dir={base / 'tiles'}", "data.size=16", "data.batch_size=8", f"paths.data_dir={base}"]
    metrics = train(compose_cfg(base / "run", ["model=baseline", *TINY_TRAINER, *data, "seed=7"], tiny=False))
    return {"base": base, "tiles": base / "tiles", "metrics": metrics, "ckpt": Path(metrics["ckpt_path"])}


def evaluate_folder(run: dict, out: Path, *overrides: str) -> dict:

    from sslpath.evaluation.evaluate import evaluate

    data = ["data=folder", f"data.dir={run['tiles']}", f"paths.data_dir={run['base']}", "report=false"]
    return evaluate(compose_evaluate(f"ckpt={run['ckpt']}", *data, f"out={out}", "device=cpu", *overrides))


def test_the_checkpoint_records_the_folders_split(folder_run):
    from sslpath.models.checkpoint import load_checkpoint, read_metadata

    split = read_metadata(load_checkpoint(folder_run["ckpt"]), folder_run["ckpt"]).split
    dm = folder_module(folder_run["tiles"], folder_run["base"] / "folder_cache", seed=7, val_fraction=0.1, test_fraction=0.1)
    assert split == {"seed": 7, "val_fraction": 0.1, "test_fraction": 0.1, **dm.tiles.split_digests()}
    other = folder_module(folder_run["tiles"], folder_run["base"] / "folder_cache", seed=42, val_fraction=0.1, test_fraction=0.1)
    assert other.tiles.split_digests()["test"] != split["test"]  # seed=42's "test" tiles would include training tiles


def test_evaluate_splits_a_folder_as_the_checkpoint_recorded(folder_run, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    metrics = evaluate_folder(folder_run, tmp_path / "eval")  # evaluate's default seed=42, training's was 7
    run = folder_run["metrics"]
    assert "splitting with the settings" in caplog.text and "data.seed=7" in caplog.text
    assert metrics["num_images"] == 3 and metrics["test_acc"] == run["test_acc"]
    assert metrics["per_class_acc"] == run["per_class_acc"]


def test_evaluate_refuses_a_folder_whose_split_changed(folder_run, tmp_path):
    import shutil

    run = {**folder_run, "tiles": tmp_path / "tiles"}
    shutil.copytree(folder_run["tiles"], run["tiles"])
    for tile in run["tiles"].rglob("*.bmp"):
        rewrite_in_place(tile)
    with pytest.raises(UserError, match=r"the test split of data.dir=.* is not the one .*recorded.*check_split=false"):
        evaluate_folder(run, tmp_path / "eval")
    assert not (tmp_path / "eval").exists() or not any((tmp_path / "eval").iterdir())
    assert evaluate_folder(run, tmp_path / "other", "check_split=false")["num_images"] == 3  # another data set, said so


@pytest.mark.parametrize(
    "split",
    [
        {"seed": 7.0},
        {"seed": True},
        {"val_fraction": 1.5},
        {"seed": None},  # given splits have no fractions either
        {"test": "0" * 63},
        {"train": "Z" * 64},
        {"extra": 1},
    ],
    ids=["seed-float", "seed-bool", "fraction-outside", "seed-null-with-fractions", "short-digest", "not-hex", "extra-key"],
)
def test_a_crafted_split_record_is_refused(folder_run, split):
    from sslpath.models.checkpoint import load_checkpoint, read_metadata

    ckpt = load_checkpoint(folder_run["ckpt"])
    ckpt["sslpath"]["split"] = {**ckpt["sslpath"]["split"], **split}
    with pytest.raises(UserError, match=r"its sslpath metadata has split=.*allowed: null or \{seed, val_fraction"):
        read_metadata(ckpt, folder_run["ckpt"])


def test_two_runs_on_one_folder_convert_it_once(tmp_path, tiles, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from sslpath.data import tile_files

    conversions = []
    read_tiles = tile_files.read_tiles

    def counting(*args, **kwargs):
        conversions.append(1)
        return read_tiles(*args, **kwargs)

    monkeypatch.setattr(tile_files, "read_tiles", counting)
    modules = [folder_module(tiles, tmp_path / "cache") for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        assert len({path for path in pool.map(lambda dm: dm.tiles.prepare(), modules)}) == 1
    assert len(conversions) == 1 and all(dm.tiles.record is not None for dm in modules)


def test_the_left_out_tiles_are_counted_per_given_split(tmp_path, caplog):

    root = tmp_path / "tiles"
    for split, start in (("train", 0), ("val", 10), ("test", 20)):
        make_tiles(root / split, {"adipose": 3, "tumour": 3}, start=start)
    pool = tmp_path / "pool"
    make_tiles(pool, {"mucus": 2}, start=50)
    copies = [sorted((root / "val" / "tumour").iterdir())[0], *sorted((root / "test" / "tumour").iterdir())[:2]]
    for i, source in enumerate(copies):
        (pool / f"copy{i}{source.suffix}").write_bytes(source.read_bytes())
    folder_module(root, tmp_path / "cache", unlabeled_dir=str(pool))
    assert "left out 3 of its 5 image files that are labelled tiles" in caplog.text
    assert "(2 of test/, 1 of val/), the same file or the same bytes" in caplog.text and "uses the other 2" in caplog.text


def test_a_test_tile_with_a_training_tiles_bytes_is_named_every_run(tmp_path, caplog):
    import json

    root = tmp_path / "tiles"
    for split, start in (("train", 0), ("val", 10), ("test", 20)):
        bmp_tiles(root / split, 3, start=start)
    twin, original = root / "test" / "tumour" / "twin.bmp", root / "train" / "tumour" / "tile0.bmp"
    twin.write_bytes(original.read_bytes())
    for _ in range(2):  # converted, then reused
        caplog.clear()
        dm = folder_module(root, tmp_path / "cache")
        dm.setup("fit")
        assert f"1 validation/test tile(s) of {root} have the same bytes as a training tile" in caplog.text
        assert f"{twin} = {original}" in caplog.text
    assert json.loads(dm.tiles.sidecar.read_text())["leaked"] == [{"file": str(twin), "same_as": str(original)}]
