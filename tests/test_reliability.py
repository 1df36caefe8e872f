"""Faults and bad input: resume after SIGKILL, SIGTERM, untrusted checkpoints, clear errors that leave nothing behind."""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import TINY, TINY_DATA, TINY_TRAINER, cli_env, compose_cfg, run_cli
from sslpath import checkpoints, train
from sslpath.checkpoints import load_checkpoint
from sslpath.errors import UserError
from test_data import write_npz

RESULT_GLOBS = ("*.ckpt", "metrics.json", "test_predictions.csv", "results.md", "*.tmp", "*.part")


def leftovers(root: Path) -> list[Path]:
    return [p for pattern in RESULT_GLOBS for p in root.rglob(pattern)]


def cli(tmp_path: Path, *overrides: str, capsys, data: list[str] = TINY_DATA, run_dir: str | None = "run") -> tuple[int, str]:
    """Run `python -m sslpath.train` in-process; return (exit code, stderr). run_dir=None keeps the
    configured run dir (under paths.log_dir)."""
    run = [f"hydra.run.dir={tmp_path}/{run_dir}"] if run_dir else []
    argv = ["sslpath.train", *data, *TINY_TRAINER, f"paths.log_dir={tmp_path}/logs", *run, *overrides]
    old_argv, root = sys.argv, logging.getLogger()
    old_handlers = list(root.handlers)
    sys.argv = argv
    try:
        train.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        # Hydra points the root logger at this test's captured stderr; later tests must not log to it.
        sys.argv, root.handlers[:] = old_argv, old_handlers
        GlobalHydra.instance().clear()
    return code, capsys.readouterr().err


def spawn(tmp_path: Path, run_dir: Path, *overrides: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "sslpath.train", *TINY, f"paths.log_dir={tmp_path}/logs", f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.1)


# ----------------------------------------------------------------------------------------------
# Resume


DETERMINISTIC = ["trainer.max_epochs=3", "trainer.deterministic=true", "+callbacks.slow._target_=helpers.SlowSteps"]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    killed = tmp_path / "killed"
    proc = spawn(tmp_path, killed, *DETERMINISTIC)
    last = killed / "checkpoints" / "last.ckpt"
    wait_for(lambda: last.is_file() or proc.poll() is not None)
    time.sleep(0.5)  # into epoch 1: one or two steps done
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "metrics.json").exists()
    assert load_checkpoint(last)["epoch"] == 0  # the epoch-end checkpoint survived intact

    resumed = run_cli(*TINY, f"paths.log_dir={tmp_path}/logs", *DETERMINISTIC, f"resume={killed}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    clean = tmp_path / "clean"
    baseline = run_cli(*TINY, f"paths.log_dir={tmp_path}/logs", *DETERMINISTIC, f"hydra.run.dir={clean}", cwd=tmp_path)
    assert baseline.returncode == 0, baseline.stderr[-3000:]

    a = load_checkpoint(killed / "checkpoints" / "last.ckpt")["state_dict"]
    b = load_checkpoint(clean / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    metrics_a = json.loads((killed / "metrics.json").read_text())
    metrics_b = json.loads((clean / "metrics.json").read_text())
    assert metrics_a["test_acc"] == metrics_b["test_acc"] and metrics_a["epochs"] == 3

    # one TensorBoard log, no epoch logged twice
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted((killed / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "val/acc" in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars("val/acc")]
    assert len(steps) == 3 and len(set(steps)) == 3


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    code, _ = cli(tmp_path, capsys=capsys)
    assert code == 0
    code, err = cli(tmp_path, f"resume={tmp_path}/run", "optimizer.lr=0.5", capsys=capsys)
    assert code == 2 and "cannot resume" in err and "optimizer.lr" in err


def test_sigterm_saves_last_checkpoint_and_exits_nonzero(tmp_path):
    run_dir = tmp_path / "run"
    proc = spawn(tmp_path, run_dir, "trainer.max_epochs=5", "+callbacks.slow._target_=helpers.SlowSteps")
    wait_for(lambda: list(run_dir.glob("tb/events.*")) or proc.poll() is not None)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "resume=RUN_DIR" in err
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] >= 1
    assert not (run_dir / "metrics.json").exists()


def test_chained_resume_does_not_pretrain_again(tmp_path, capsys):
    code, _ = cli(tmp_path, "model=finetune", capsys=capsys)
    assert code == 0
    pre = list((tmp_path / "logs" / "pretrain").glob("*/metrics.json"))
    stamp = pre[0].stat().st_mtime_ns
    code, err = cli(tmp_path, "model=finetune", f"resume={tmp_path}/run", capsys=capsys)
    assert code == 0, err
    assert pre[0].stat().st_mtime_ns == stamp and len(list((tmp_path / "logs" / "pretrain").glob("*/metrics.json"))) == 1


def test_deterministic_runs_are_bit_identical(tmp_path):
    results = []
    for name in ("a", "b"):
        metrics = train.run(compose_cfg(tmp_path / name, ["trainer.deterministic=true", "trainer.max_epochs=2"]))
        results.append({k: metrics[k] for k in ("test_loss", "test_acc", "test_auc", "per_class_acc", "best_val_acc")})
    assert results[0] == results[1]


# ----------------------------------------------------------------------------------------------
# Untrusted checkpoints


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_checkpoint_is_refused_without_executing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "sslpath": {"kind": "ssl"}, "payload": Exploit(marker)}, evil)
    with pytest.raises(UserError, match="refused to load"):
        load_checkpoint(evil)
    code, err = cli(tmp_path, "model=finetune", f"model.pretrained_ckpt={evil}", capsys=capsys)
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
    return train.run(compose_cfg(out, []))["ckpt_path"]


FILE_DATA = ["data.size=16", "data.batch_size=8"]


def bad_files(tmp: Path) -> dict[str, tuple[list[str], list[str], str]]:
    """name -> (data overrides, other overrides, expected message fragment)."""
    (tmp / "text.npz").write_text("not a zip")
    good = write_npz(tmp / "good.npz", num_classes=9, size=16)
    (tmp / "cut.npz").write_bytes(good.read_bytes()[:500])
    write_npz(tmp / "nokeys.npz", num_classes=9, size=16, val_images=None)
    write_npz(tmp / "float.npz", num_classes=9, size=16, train_images=np.zeros((20, 16, 16, 3), np.float32))
    write_npz(tmp / "shape.npz", num_classes=9, size=16, train_images=np.zeros((20, 16, 16), np.uint8))
    write_npz(tmp / "range.npz", num_classes=9, size=16, test_labels=np.full((6, 1), 12, np.uint8))
    write_npz(tmp / "empty.npz", num_classes=9, size=16, val_images=np.zeros((0, 16, 16, 3), np.uint8), val_labels=np.zeros((0, 1), np.uint8))
    (tmp / "notackpt.ckpt").write_text("hello")
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
        "label fraction > 1": (TINY_DATA, ["data.label_fraction=1.5"], "outside (0, 1]"),
        "label fraction 0": (TINY_DATA, ["data.label_fraction=0"], "outside (0, 1]"),
        "label fraction too small": (TINY_DATA, ["data.label_fraction=0.01"], "keeps no label of class"),
        "pretrained ckpt missing": (TINY_DATA, ["model=finetune", f"model.pretrained_ckpt={tmp}/none.ckpt"], "checkpoint not found"),
        "pretrained not a ckpt": (TINY_DATA, ["model=finetune", f"model.pretrained_ckpt={tmp}/notackpt.ckpt"], "not a readable PyTorch checkpoint"),
        "image too small": (TINY_DATA, ["model.backbone.stem=imagenet"], "too small for model.backbone.stem=imagenet"),
        "NaN loss": (TINY_DATA, ["optimizer.lr=1e30", "trainer.max_epochs=2"], "loss became nan"),
        "output dir not writable": (TINY_DATA, [f"paths.log_dir={tmp}/text.npz/sub"], "cannot write the output dir"),
    }


def _cases() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return list(bad_files(Path(tmp)))


@pytest.mark.parametrize("case", _cases())
def test_bad_input_fails_clearly_and_leaves_nothing(tmp_path, capsys, case):
    data, overrides, message = bad_files(tmp_path)[case]
    run_dir = None if case == "output dir not writable" else "run"  # the default, interpolated run dir
    code, err = cli(tmp_path, *overrides, capsys=capsys, data=data, run_dir=run_dir)
    assert code == 2, err[-2000:]
    assert message in err
    assert "Traceback" not in err and err.count("\n") <= 2
    assert leftovers(tmp_path / "run") == [] and leftovers(tmp_path / "logs") == []


def test_baseline_checkpoint_passed_as_ssl(tmp_path, capsys, baseline_ckpt):
    code, err = cli(tmp_path, "model=finetune", f"model.pretrained_ckpt={baseline_ckpt}", capsys=capsys)
    assert code == 2 and "is a baseline checkpoint, not an SSL one" in err
    assert leftovers(tmp_path / "run") == []


@pytest.fixture
def served_npz(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    source = write_npz(root / "pathmnist.npz", num_classes=9, size=28)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield source, f"http://127.0.0.1:{server.server_address[1]}/pathmnist.npz"
    server.shutdown()


def test_md5_mismatch_on_download(tmp_path, capsys, served_npz):
    source, url = served_npz
    overrides = [*FILE_DATA[1:], f"paths.data_dir={tmp_path}/data", "data.download=true", f"data.url={url}"]
    code, err = cli(tmp_path, *overrides, "data.md5=" + "0" * 32, capsys=capsys, data=[])
    assert code == 2 and "MD5" in err and not list((tmp_path / "data").glob("*"))
    assert leftovers(tmp_path / "run") == []
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    code, err = cli(tmp_path, *overrides, f"data.md5={md5}", capsys=capsys, data=[])
    assert code == 0, err
    assert (tmp_path / "data" / "pathmnist.npz").read_bytes() == source.read_bytes()


def test_disk_full_while_saving_keeps_nothing_torn(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoints.torch, "save", full)
    code, err = cli(tmp_path, capsys=capsys)
    assert code == 2 and "no space left" in err and "ckpt_path=last" in err
    assert leftovers(tmp_path / "run") == []
