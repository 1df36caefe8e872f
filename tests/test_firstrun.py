"""The first run on a fresh machine: `python -m sslpath.train model=ssl` downloads, verifies and trains;
a run that stops before training leaves no run dir; the console carries no first-run noise."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from filelock import FileLock

from sslpath.data.download import partial_path, size_text
from sslpath.training import rundir as runs

from factories import TINY_TRAINER, cli_env, closed_port, read_metrics, run_cli, train_cli, write_npz

# The official 28 px file's format at a tiny size: 48 training tiles, a few seconds of SSL on 2 CPU cores.
COUNTS = (48, 18, 18)


def offline(tmp_path: Path) -> list[str]:
    """data=pathmnist with nothing on disk and a URL nobody answers (refused at once)."""
    return ["data=pathmnist", f"paths.data_dir={tmp_path}/data", f"data.url=http://127.0.0.1:{closed_port()}/pathmnist.npz"]


def test_a_run_that_stops_before_training_leaves_no_run_dir(tmp_path):
    code, err = train_cli(tmp_path, *offline(tmp_path), data=[], run_dir=None)
    assert code == 2 and "sslpath tried to download it from" in err and "Connection refused" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "logs").exists()  # the run dir, and logs/runs/ made for it, are gone
    assert (tmp_path / "data").is_dir()  # where the file will go: kept for the next try


def test_a_new_run_dir_given_by_hand_is_removed_but_not_the_folders_that_were_there(tmp_path):
    (tmp_path / "mine").mkdir()
    code, _ = train_cli(tmp_path, *offline(tmp_path), data=[], run_dir="mine/new/run")
    assert code == 2 and not (tmp_path / "mine" / "new").exists() and (tmp_path / "mine").is_dir()


def test_a_run_dir_that_existed_before_is_never_removed(tmp_path):
    (tmp_path / "run").mkdir()
    code, _ = train_cli(tmp_path, *offline(tmp_path), data=[], run_dir="run")
    assert code == 2 and (tmp_path / "run" / "config.yaml").is_file()


def test_a_resumed_run_dir_is_never_removed(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text("seed: 42\n")
    code, err = train_cli(tmp_path, f"resume={tmp_path}/old", run_dir=None)
    assert code == 2 and "cannot resume" in err and (tmp_path / "old" / "config.yaml").read_text() == "seed: 42\n"


def test_a_run_that_trained_keeps_its_run_dir(tmp_path):
    code, err = train_cli(tmp_path, "optimizer.lr=1e30", "trainer.max_epochs=2", run_dir="run")
    assert code == 2 and "loss became nan" in err
    assert not {p.name for p in (tmp_path / "run").iterdir()} <= runs.START_UP_FILES


def test_a_chained_fine_tune_that_stops_before_training_leaves_no_stage_dir(tmp_path):
    code, _ = train_cli(tmp_path, "model=finetune", *offline(tmp_path), data=[], run_dir=None)
    assert code == 2 and not list((tmp_path / "logs").rglob("config.yaml"))


def test_remove_if_unstarted_keeps_dirs_in_use_or_holding_more(tmp_path):
    for name in ("busy", "more", "free"):
        runs.note_if_new(tmp_path / "parent" / name)
        (tmp_path / "parent" / name / ".hydra").mkdir(parents=True)
        (tmp_path / "parent" / name / "train.log").write_text("log\n")
    (tmp_path / "parent" / "more" / "notes.txt").write_text("mine")
    with FileLock(tmp_path / "parent" / "busy" / runs.LOCK):  # another process holds it
        assert not runs.remove_if_unstarted(tmp_path / "parent" / "busy")
    assert not runs.remove_if_unstarted(tmp_path / "parent" / "more")
    assert runs.remove_if_unstarted(tmp_path / "parent" / "free")
    assert sorted(p.name for p in (tmp_path / "parent").iterdir()) == ["busy", "more"]  # parent not empty: kept
    assert not runs.remove_if_unstarted(tmp_path / "elsewhere")  # never noted


@pytest.mark.slow
def test_first_run_in_an_empty_dir_downloads_resumes_trains_and_fails_fast_offline(tmp_path, file_server):
    """The issue's done-when, across real process boundaries: `python -m sslpath.train model=ssl` in an
    empty dir with a fresh matplotlib config, a data dir of its own and the test server as PathMNIST's URL."""
    source = write_npz(file_server.root / "pathmnist.npz", counts=COUNTS, size=28, num_classes=9).read_bytes()
    cut = len(source) // 3
    env = {**cli_env(), "SSLPATH_DATA_DIR": str(tmp_path / "data"), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    (tmp_path / "mpl").mkdir()
    cwd = tmp_path / "empty"
    cwd.mkdir()
    url = file_server.url("pathmnist.npz")
    command = ["model=ssl", f"data.url={url}", f"data.md5={hashlib.md5(source).hexdigest()}", *TINY_TRAINER]

    # 1. The connection drops a third of the way in: a clear stop, the partial file kept, no run dir.
    file_server.cut_after = cut
    first = run_cli(*command, cwd=cwd, timeout=300, env=env)
    assert first.returncode == 2, first.stderr[-3000:]
    assert "the next run resumes from there" in first.stderr and "Traceback" not in first.stderr
    assert partial_path(tmp_path / "data" / "pathmnist.npz").stat().st_size == cut
    assert list(cwd.iterdir()) == []
    assert "fontManager" not in first.stdout + first.stderr and list((tmp_path / "mpl").glob("fontlist*.json"))

    # 2. The same command resumes from where it stopped, verifies and trains.
    second = run_cli(*command, cwd=cwd, timeout=300, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert [r.get("Range") for r in file_server.requests] == [None, f"bytes={cut}-"]
    assert (tmp_path / "data" / "pathmnist.npz").read_bytes() == source
    assert f"downloaded pathmnist.npz ({size_text(len(source))}, MD5 verified) -> {tmp_path}/data/pathmnist.npz" in (
        second.stdout
    )
    (run_dir,) = (cwd / "outputs" / "runs").iterdir()
    assert run_dir.name.endswith("_ssl") and read_metrics(run_dir)["model"] == "simclr"

    # 3. Offline in another empty dir: one paragraph at once, nothing left behind.
    offline_cwd = tmp_path / "offline"
    offline_cwd.mkdir()
    offline_env = {**env, "SSLPATH_DATA_DIR": str(tmp_path / "data2")}
    refused = [c if not c.startswith("data.url=") else f"data.url=http://127.0.0.1:{closed_port()}/x.npz" for c in command]
    third = run_cli(*refused, cwd=offline_cwd, timeout=120, env=offline_env)
    assert third.returncode == 2 and third.stderr.count("\n") == 1, third.stderr[-3000:]
    assert third.stderr.startswith("sslpath.train: error: pathmnist not found at") and "sslpath tried to download" in third.stderr
    assert list(offline_cwd.iterdir()) == []
    assert os.listdir(tmp_path / "data2") == [".pathmnist.npz.lock"]


@pytest.mark.slow
def test_under_ddp_rank_zero_downloads_and_the_other_rank_waits(tmp_path, file_server):
    source = write_npz(file_server.root / "pathmnist.npz", counts=COUNTS, size=28, num_classes=9).read_bytes()
    result = run_cli(
        "model=ssl",
        f"data.url={file_server.url('pathmnist.npz')}",
        f"data.md5={hashlib.md5(source).hexdigest()}",
        *TINY_TRAINER,
        "data.batch_size=12",
        "trainer=ddp",  # 2 CPU processes (gloo); SyncBatchNorm needs GPUs
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.sync_batchnorm=false",
        f"paths.data_dir={tmp_path}/data",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(file_server.requests) == 1 and (tmp_path / "data" / "pathmnist.npz").read_bytes() == source
    assert read_metrics(tmp_path / "run")["model"] == "simclr"
