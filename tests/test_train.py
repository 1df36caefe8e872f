"""End-to-end runs on tiny synthetic data: results, checkpoints, the SSL -> fine-tune chain, multirun."""

import json
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import helpers
from conftest import TINY, compose_cfg, run_cli
from sslpath.checkpoints import load_checkpoint
from sslpath.train import run

METRIC_KEYS = {"test_loss", "test_acc", "test_auc", "per_class_acc", "ckpt_path", "epochs", "wall_seconds"}


@pytest.mark.parametrize("model", ["baseline", "ssl"])
def test_model_end_to_end(tmp_path, model):
    metrics = run(compose_cfg(tmp_path, [f"model={model}", "trainer.max_epochs=2"]))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert METRIC_KEYS <= saved.keys() and saved == json.loads(json.dumps(metrics))
    assert saved["epochs"] == 2 and 0 <= saved["test_acc"] <= 1 and 0 <= saved["test_auc"] <= 1
    assert len(saved["per_class_acc"]) == 9
    assert Path(saved["ckpt_path"]).is_file() and Path(saved["ckpt_path"]).name.startswith("best-")
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    ckpt = load_checkpoint(saved["ckpt_path"])
    assert ckpt["sslpath"]["kind"] == model and ckpt["sslpath"]["class_names"][0] == "class 0"
    rows = (tmp_path / "test_predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 36
    # TensorBoard: per-epoch curves (+ kNN monitor for SSL) and the Projector's embeddings
    tags = set()
    for events in (tmp_path / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    expected = {"train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "test/auc"}
    assert expected | ({"val/knn_acc", "train/ssl_loss", "train/ssl_acc"} if model == "ssl" else set()) <= tags
    (metadata,) = (tmp_path / "tb").rglob("metadata.tsv")
    assert len(metadata.read_text().splitlines()) == 36 and (metadata.parent / "sprite.png").is_file()


def test_finetune_chains_from_ssl_best_checkpoint(tmp_path):
    helpers.RECORDED.clear()
    cfg = compose_cfg(tmp_path, ["model=finetune", "+callbacks.record._target_=helpers.RecordBackbone"])
    metrics = run(cfg)
    (pre_dir,) = (tmp_path / "logs" / "pretrain").glob("*/")
    pre = json.loads((pre_dir / "metrics.json").read_text())
    assert metrics["pretrained_ckpt"] == pre["ckpt_path"] and Path(pre["ckpt_path"]).is_file()
    assert pre["model"] == "ssl" and pre["ckpt_path"].startswith(str(pre_dir / "checkpoints" / "best-"))
    assert pre["run_name"] == "ssl-pretrain"  # its own report row, never pooled with model=ssl jobs
    ssl_state = load_checkpoint(pre["ckpt_path"])["state_dict"]
    start = helpers.RECORDED["finetune"]
    assert start.keys() == {k.removeprefix("backbone.") for k in ssl_state if k.startswith("backbone.")}
    for key, value in start.items():
        assert torch.equal(value, ssl_state[f"backbone.{key}"]), key
    # an SSL run trained the backbone away from its initialisation
    assert not all(torch.equal(helpers.RECORDED["ssl"][k], v) for k, v in start.items())


def test_finetunes_share_one_pretraining_per_ssl_settings(tmp_path):
    logs = f"paths.log_dir={tmp_path}/logs"
    first = run(compose_cfg(tmp_path / "a", ["model=finetune", logs, "data.label_fraction=0.5"]))
    second = run(compose_cfg(tmp_path / "b", ["model=finetune", logs, "data.label_fraction=1.0"]))
    assert first["pretrained_ckpt"] == second["pretrained_ckpt"]
    assert len(list((tmp_path / "logs" / "pretrain").glob("*/metrics.json"))) == 1
    third = run(compose_cfg(tmp_path / "c", ["model=finetune", logs, "pretrain.temperature=0.5"]))
    assert third["pretrained_ckpt"] != first["pretrained_ckpt"]


def test_finetune_from_given_checkpoint_and_linear_probe(tmp_path):
    ssl = run(compose_cfg(tmp_path / "ssl", ["model=ssl"]))
    helpers.RECORDED.clear()
    probe = run(
        compose_cfg(
            tmp_path / "probe",
            ["model=finetune", f"model.pretrained_ckpt={ssl['ckpt_path']}", "model.freeze_backbone=true",
             "+callbacks.record._target_=helpers.RecordBackbone"],
        )
    )
    assert probe["pretrained_ckpt"] == ssl["ckpt_path"] and probe["freeze_backbone"] is True
    assert not (tmp_path / "probe" / "logs" / "pretrain").exists()
    final = load_checkpoint(probe["ckpt_path"])["state_dict"]
    for key, value in helpers.RECORDED["finetune"].items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, final[f"backbone.{key}"]), f"frozen backbone changed: {key}"


def test_multirun_baseline_and_ssl(tmp_path):
    result = run_cli("-m", "model=baseline,ssl", *TINY, f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / "metrics.json").is_file())
    assert runs == ["0_baseline", "1_ssl"]


def test_missing_pathmnist_fails_fast_with_guidance(tmp_path):
    start = time.monotonic()
    result = run_cli("data=pathmnist", f"paths.data_dir={tmp_path}/nodata", cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode == 2 and elapsed < 30
    assert "Traceback" not in result.stderr
    assert f"{tmp_path}/nodata/pathmnist.npz" in result.stderr and "https://zenodo.org" in result.stderr
    assert "data.path=" in result.stderr and "data=synthetic" in result.stderr
    assert not list((tmp_path / "outputs").rglob("*.ckpt")) and not list((tmp_path / "outputs").rglob("metrics.json"))
