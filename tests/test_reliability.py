"""Faults and bad input: resume after SIGKILL, SIGTERM, untrusted checkpoints, clear errors that leave nothing behind."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from sslpath.core.errors import UserError
from sslpath.models.checkpoint import load_checkpoint
from sslpath.training import checkpoint_writer as checkpoint_io
from sslpath.training.fit import train
from sslpath.training.rundir import LOCK

from factories import (
    TINY,
    TINY_DATA,
    compose_cfg,
    data_files,
    read_metrics,
    run_cli,
    train_cli,
    write_npz,
)

RESULT_GLOBS = ("*.ckpt", "metrics.json", "test_predictions.csv", "results.md", "*.tmp", "*.part")


def leftovers(root: Path) -> list[Path]:
    return [p for pattern in RESULT_GLOBS for p in root.rglob(pattern)]


# ----------------------------------------------------------------------------------------------
# Resume


DETERMINISTIC = ["trainer.max_epochs=3", "trainer.deterministic=true"]


def tiny_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_cli(*TINY, f"paths.log_dir={tmp_path}/logs", *overrides, cwd=tmp_path)


@pytest.mark.cli
def test_sigkill_mid_epoch_then_resume_of_a_moved_dir_equals_uninterrupted(tmp_path):
    killed = tmp_path / "killed"
    # the run kills itself after batch 1 of epoch 1: deterministic, no sleeps
    kill = ["+callbacks.kill._target_=helpers.SignalAt", "+callbacks.kill.epoch=1", "+callbacks.kill.batch=1"]
    proc = tiny_cli(tmp_path, *DETERMINISTIC, *kill, f"hydra.run.dir={killed}")
    assert proc.returncode == -signal.SIGKILL and not (killed / "metrics.json").exists()
    last = killed / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["epoch"] == 0  # the epoch-end checkpoint survived intact
    # a torn save from the kill: removed when the run is resumed
    torn = killed / "checkpoints" / ".last.ckpt.abc123.tmp"
    torn.write_bytes(b"partial")
    moved = tmp_path / "moved"
    killed.rename(moved)  # a run dir moved (or copied) elsewhere still resumes

    resumed = tiny_cli(tmp_path, *DETERMINISTIC, f"resume={moved}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(moved.rglob("*.tmp"))
    clean = tmp_path / "clean"
    baseline = tiny_cli(tmp_path, *DETERMINISTIC, f"hydra.run.dir={clean}")
    assert baseline.returncode == 0, baseline.stderr[-3000:]

    a = load_checkpoint(moved / "checkpoints" / "last.ckpt")["state_dict"]
    b = load_checkpoint(clean / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert read_metrics(moved)["test_acc"] == read_metrics(clean)["test_acc"] and read_metrics(moved)["epochs"] == 3

    # one TensorBoard log, no epoch logged twice
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted((moved / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "val/acc" in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars("val/acc")]
    assert len(steps) == 3 and len(set(steps)) == 3


def test_resume_with_other_settings_is_refused(tmp_path):
    code, _ = train_cli(tmp_path)
    assert code == 0
    code, err = train_cli(tmp_path, f"resume={tmp_path}/run", "optimizer.lr=0.5")
    assert code == 2 and "cannot resume" in err and "optimizer.lr" in err


@pytest.mark.cli
def test_sigterm_saves_a_checkpoint_exits_143_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    term = [
        "+callbacks.term._target_=helpers.SignalAt",
        "+callbacks.term.epoch=1",
        "+callbacks.term.batch=0",
        "+callbacks.term.signum=SIGTERM",
    ]
    proc = tiny_cli(tmp_path, "trainer.max_epochs=3", *term, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "resume=RUN_DIR" in proc.stderr
    saved = load_checkpoint(run_dir / "checkpoints" / "interrupted.ckpt")
    assert saved["global_step"] > load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    assert not (run_dir / "metrics.json").exists()
    resumed = tiny_cli(tmp_path, "trainer.max_epochs=3", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_metrics(run_dir)["epochs"] == 3 and not (run_dir / "checkpoints" / "interrupted.ckpt").exists()


def test_a_busy_run_dir_is_refused_naming_the_owner(tmp_path):
    from filelock import FileLock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / f"{LOCK}.pid").write_text("4242\n")
    with FileLock(run_dir / LOCK):
        code, err = train_cli(tmp_path)
    assert code == 2 and "in use by another sslpath process (pid 4242)" in err
    assert leftovers(run_dir) == []
    code, _ = train_cli(tmp_path)  # free again: the run proceeds
    assert code == 0


def test_resume_of_a_missing_dir_creates_nothing(tmp_path):
    code, err = train_cli(tmp_path, f"resume={tmp_path}/typo", run_dir=None)
    assert code == 2 and "not a run dir" in err
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("damage", ["seed: [unclosed", "- 1\n- 2\n", "seed: ${oc.env:HOME}\n"])
def test_resume_with_a_damaged_config_is_a_clear_error(tmp_path, damage):
    code, _ = train_cli(tmp_path)
    assert code == 0
    (tmp_path / "run" / "config.yaml").write_text(damage)
    code, err = train_cli(tmp_path, f"resume={tmp_path}/run", run_dir=None)
    assert code == 2 and "cannot resume" in err and "Traceback" not in err
    assert os.environ.get("HOME", "/nonexistent") not in err.replace(str(tmp_path), "")  # never resolved


@pytest.mark.cli
def test_a_damaged_ssl_stage_record_is_a_clear_error(tmp_path):
    shared = f"paths.pretrain_dir={tmp_path}/shared"
    code, _ = train_cli(tmp_path, "model=finetune", shared, run_dir="a")
    assert code == 0
    (record,) = (tmp_path / "shared").glob("*/metrics.json")
    record.write_text("[1]")
    code, err = train_cli(tmp_path, "model=finetune", shared, run_dir="b")
    assert code == 2 and "metrics.json holds an array, not an object" in err and "to pretrain again" in err
    assert "Traceback" not in err


def test_a_checkpoint_from_another_run_never_ends_in_a_traceback(tmp_path):
    code, _ = train_cli(tmp_path, run_dir="a")
    assert code == 0
    code, err = train_cli(tmp_path, f"ckpt_path={tmp_path}/a/checkpoints/last.ckpt", run_dir="b")
    assert code == 2 and "nothing left to train" in err and "Traceback" not in err


def test_resume_from_a_truncated_last_checkpoint_is_a_clear_error(tmp_path):
    code, _ = train_cli(tmp_path)
    assert code == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    code, err = train_cli(tmp_path, f"resume={tmp_path}/run", run_dir=None)
    assert code == 2 and "not a readable PyTorch checkpoint" in err and "truncated" in err
    assert "Traceback" not in err


@pytest.mark.cli
def test_chained_resume_does_not_pretrain_again(tmp_path):
    code, _ = train_cli(tmp_path, "model=finetune")
    assert code == 0
    pre = list((tmp_path / "run" / "pretrain").glob("*/metrics.json"))
    stamp = pre[0].stat().st_mtime_ns
    code, err = train_cli(tmp_path, "model=finetune", f"resume={tmp_path}/run")
    assert code == 0, err
    assert pre[0].stat().st_mtime_ns == stamp and len(list((tmp_path / "run" / "pretrain").glob("*/metrics.json"))) == 1


# ----------------------------------------------------------------------------------------------
# Untrusted checkpoints


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_checkpoint_is_refused_without_executing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "sslpath": {"kind": "simclr"}, "payload": Exploit(marker)}, evil)
    with pytest.raises(UserError, match="refused to load"):
        load_checkpoint(evil)
    code, err = train_cli(tmp_path, "model=finetune", f"model.pretrained_ckpt={evil}")
    assert code == 2 and "refused to load" in err
    assert not marker.exists()
    # the same file really does run code when unpickled without weights_only
    torch.load(evil, weights_only=False)
    assert marker.exists()


# ----------------------------------------------------------------------------------------------
# Bad input: exit 2, a message naming the problem, nothing left behind


@pytest.fixture(scope="module")
def baseline_ckpt(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("baseline")
    return train(compose_cfg(out, []))["ckpt_path"]


FILE_DATA = ["data.size=16", "data.batch_size=8"]


def bad_files(tmp: Path) -> dict[str, tuple[list[str], list[str], str]]:
    """name -> (data overrides, other overrides, expected message fragment)."""
    (tmp / "text.npz").write_text("not a zip")
    good = write_npz(tmp / "good.npz", num_classes=9, size=16)
    (tmp / "cut.npz").write_bytes(good.read_bytes()[:500])
    write_npz(tmp / "nokeys.npz", num_classes=9, size=16, val_images=None)
    write_npz(tmp / "float.npz", num_classes=9, size=16, train_images=np.zeros((20, 16, 16, 3), np.float32))
    write_npz(tmp / "shape.npz", num_classes=9, size=16, train_images=np.zeros((20, 16, 16, 2), np.uint8))
    write_npz(tmp / "range.npz", num_classes=9, size=16, test_labels=np.full((6, 1), 12, np.uint8))
    write_npz(
        tmp / "empty.npz",
        num_classes=9,
        size=16,
        val_images=np.zeros((0, 16, 16, 3), np.uint8),
        val_labels=np.zeros((0, 1), np.uint8),
    )
    (tmp / "notackpt.ckpt").write_text("hello")
    huge_npz(tmp / "huge.npz", good)
    file_data = lambda name: [f"data.path={tmp / name}", *FILE_DATA]
    return {
        "missing file": (file_data("nowhere.npz"), [], "data file not found"),
        "not an npz": (file_data("text.npz"), [], "not a readable .npz"),
        "truncated": (file_data("cut.npz"), [], "truncated"),
        "missing keys": (file_data("nokeys.npz"), [], "lacks the key"),
        "wrong dtype": (file_data("float.npz"), [], "expected uint8"),
        "wrong shape": (file_data("shape.npz"), [], "expected N×H×W×3"),
        "labels out of range": (file_data("range.npz"), [], "data.num_classes=9"),
        "empty split": (file_data("empty.npz"), [], "split is empty"),
        "label fraction > 1": (
            TINY_DATA,
            ["data.label_fraction=1.5"],
            "data.label_fraction=1.5 is not valid: it must be a number > 0 and <= 1",
        ),
        "label fraction 0": (TINY_DATA, ["data.label_fraction=0"], "data.label_fraction=0 is not valid"),
        "label fraction too small": (TINY_DATA, ["data.label_fraction=0.01"], "keeps no label of class"),
        "pretrained ckpt missing": (
            TINY_DATA,
            ["model=finetune", f"model.pretrained_ckpt={tmp}/none.ckpt"],
            "checkpoint not found",
        ),
        "pretrained not a ckpt": (
            TINY_DATA,
            ["model=finetune", f"model.pretrained_ckpt={tmp}/notackpt.ckpt"],
            "not a readable PyTorch checkpoint",
        ),
        "image too small": (
            TINY_DATA,
            ["model.backbone.name=resnet18", "model.backbone.stem=imagenet"],
            "too small for model.backbone.stem=imagenet",
        ),
        "ckpt_path not a checkpoint": (TINY_DATA, [f"ckpt_path={tmp}/notackpt.ckpt"], "not a readable PyTorch checkpoint"),
        "ckpt_path missing": (TINY_DATA, [f"ckpt_path={tmp}/none.ckpt"], "checkpoint not found"),
        "batch size 0": (TINY_DATA, ["data.batch_size=0"], "data.batch_size=0 is not valid: it must be an integer >= 1"),
        "batch size -1": (TINY_DATA, ["data.batch_size=-1"], "data.batch_size=-1 is not valid"),
        "eval batch size 0": (TINY_DATA, ["data.eval_batch_size=0"], "data.eval_batch_size=0 is not valid"),
        "train count 0": (TINY_DATA, ["data.train_count=0"], "data.train_count=0 is not valid"),
        "max epochs abc": (TINY_DATA, ["trainer.max_epochs=abc"], "trainer.max_epochs='abc' is not valid: it must be an integer"),
        "max epochs 0": (TINY_DATA, ["trainer.max_epochs=0"], "trainer.max_epochs=0 is not valid"),
        "label fraction abc": (
            TINY_DATA,
            ["data.label_fraction=abc"],
            "data.label_fraction='abc' is not valid: it must be a number",
        ),
        "seed -1": (TINY_DATA, ["seed=-1"], "seed=-1 is not valid"),
        "pretrain given a value": (TINY_DATA, ["model=finetune", "pretrain=byol"], "model@pretrain=<method>"),
        "mean with one value": (TINY_DATA, ["data.mean=[0.5]"], "data.mean=[0.5] is not valid"),
        "std zero": (TINY_DATA, ["data.std=[0,0,0]"], "data.std=[0, 0, 0] is not valid"),
        "milestones not numbers": (TINY_DATA, ["scheduler=multistep", "scheduler.milestones=[abc]"], "scheduler.milestones="),
        "precision unknown": (TINY_DATA, ["trainer.precision=foo"], "Lightning refused the trainer settings"),
        "huge declared array": (file_data("huge.npz"), [], "more than half of this machine's memory"),
        "NaN loss": (TINY_DATA, ["optimizer.lr=1e30", "trainer.max_epochs=2"], "loss became nan"),
        "output dir not writable": (TINY_DATA, [f"paths.log_dir={tmp}/text.npz/sub"], "cannot write the output dir"),
        # Third round: once exit 1 ("Error executing job") or a traceback, or found only after training
        "flag as a list": (["data=medmnist", *FILE_DATA], ["data.flag=[a,b]"], "data.flag=['a', 'b'] is not valid"),
        "momentum > 1": (TINY_DATA, ["model=byol", "model.momentum_start=1.5"], "model.momentum_start=1.5 is not valid"),
        "negative HED alpha": (
            TINY_DATA,
            ["augment@augment.train=pathology", "augment.train.ops.4.alpha=-1"],
            "augment.train.ops.4.alpha=-1 is not valid",
        ),
        "one view for SimCLR": (TINY_DATA, ["model=simclr", "model.input.views=1"], "model.input.views=1 is not valid"),
        "unknown model parameter": (TINY_DATA, ["+model.foo=1"], "model.foo is not a setting of"),
        "early stopping on an unlogged metric": (
            TINY_DATA,
            ["callbacks=early_stopping", "callbacks.early_stopping.monitor=val/foo"],
            "callbacks.early_stopping.monitor=val/foo is not a metric",
        ),
        "supervised chain stage": (TINY_DATA, ["model=finetune", "model@pretrain=baseline"], "model@pretrain chose a baseline"),
        "n_trials 0": (TINY_DATA, ["hparams_search=optuna", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 is not valid"),
        "data path past the name limit": (file_data("N" * 300 + ".npz"), [], "is not valid: it must be a path whose every name"),
    }


def huge_npz(path: Path, good: Path) -> None:
    """A valid npz whose train_images header declares 20 tiles of 30,000² px, 50 GiB (with 64 bytes of data)."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (20, 30_000, 30_000, 3)})
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, header.getvalue() + b"x" * 64 if name == "train_images.npy" else src.read(name))


def _cases() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return list(bad_files(Path(tmp)))


@pytest.mark.parametrize("case", _cases())
def test_bad_input_fails_clearly_and_leaves_nothing(tmp_path, case):
    data, overrides, message = bad_files(tmp_path)[case]
    run_dir = None if case == "output dir not writable" else "run"  # the default, interpolated run dir
    code, err = train_cli(tmp_path, *overrides, data=data, run_dir=run_dir)
    assert code == 2, err[-2000:]
    assert message in err
    assert "Traceback" not in err and err.count("\n") <= 2
    assert leftovers(tmp_path / "run") == [] and leftovers(tmp_path / "logs") == []


def test_baseline_checkpoint_passed_as_ssl(tmp_path, baseline_ckpt):
    code, err = train_cli(tmp_path, "model=finetune", f"model.pretrained_ckpt={baseline_ckpt}")
    assert code == 2 and "is a baseline checkpoint, not an SSL one" in err
    assert leftovers(tmp_path / "run") == []


@pytest.fixture
def served_npz(file_server):
    source = write_npz(file_server.root / "pathmnist.npz", num_classes=9, size=28)
    return source, file_server.url("pathmnist.npz")


def test_md5_mismatch_on_download(tmp_path, served_npz):
    source, url = served_npz
    overrides = [*FILE_DATA[1:], f"paths.data_dir={tmp_path}/data", "data.download=true", f"data.url={url}"]
    code, err = train_cli(tmp_path, *overrides, "data.md5=" + "0" * 32, data=[])
    assert code == 2 and "MD5" in err and data_files(tmp_path / "data") == []
    assert leftovers(tmp_path / "run") == []
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    code, err = train_cli(tmp_path, *overrides, f"data.md5={md5}", data=[])
    assert code == 0, err
    assert (tmp_path / "data" / "pathmnist.npz").read_bytes() == source.read_bytes()


@pytest.mark.parametrize("after", [0, 4096], ids=["first write", "mid-checkpoint"])
def test_disk_full_while_saving_keeps_nothing_torn(tmp_path, monkeypatch, after):
    """The disk fills while a checkpoint is written: the file's writes fail with ENOSPC (which torch.save's
    zip writer turns into a RuntimeError without the cause, as on a real full disk)."""
    real = checkpoint_io.atomic_output

    class Full:
        def __init__(self, file):
            self.file, self.left = file, after

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= len(data)
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

    @contextlib.contextmanager
    def filling(path):
        with real(path) as f:
            yield Full(f)

    monkeypatch.setattr(checkpoint_io, "atomic_output", filling)
    code, err = train_cli(tmp_path)
    assert code == 2 and "no space left" in err and "ckpt_path=last" in err, err[-2000:]
    assert "Traceback" not in err and leftovers(tmp_path / "run") == []


def test_a_checkpoint_of_another_model_is_refused_before_training(tmp_path):
    code, _ = train_cli(tmp_path, "model=simclr", run_dir="ssl")
    assert code == 0
    code, err = train_cli(
        tmp_path,
        "model=baseline",
        "trainer.max_epochs=3",
        f"ckpt_path={tmp_path}/ssl/checkpoints/last.ckpt",
        run_dir="b",
    )
    assert code == 2 and "holds another model (kind: 'simclr' in the checkpoint, 'baseline' here)" in err
    assert "Traceback" not in err and leftovers(tmp_path / "b") == []


def test_a_new_run_never_lands_on_a_finished_one(tmp_path):
    code, _ = train_cli(tmp_path)
    assert code == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    code, err = train_cli(tmp_path)  # same hydra.run.dir, no resume=
    assert code == 2 and "already holds a run (metrics.json, checkpoints)" in err and "resume=" in err
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file() and LOCK not in p.name}
    assert all(before[p] == t for p, t in after.items())  # not even Hydra's .hydra/ files were rewritten


@pytest.mark.cli
def test_a_sweep_never_lands_on_an_earlier_sweep(tmp_path):
    args = ("-m", "model=baseline", *TINY, f"hydra.sweep.dir={tmp_path}/sweep", f"paths.log_dir={tmp_path}/logs")
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 2 and "already holds jobs of an earlier sweep" in again.stderr
