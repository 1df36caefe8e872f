"""End-to-end runs on tiny synthetic data: results, checkpoints, the SSL -> fine-tune chain, multirun."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sslpath.models.checkpoint import load_checkpoint, read_metadata
from sslpath.training.fit import train

import helpers
from factories import TINY, compose_cfg, read_metrics, run_command

METRIC_KEYS = {"test_loss", "test_acc", "test_auc", "per_class_acc", "absent_classes", "ckpt_path", "epochs", "wall_seconds"}


def scalar_tags(tb_dir: Path) -> set[str]:
    tags: set[str] = set()
    for events in tb_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


@pytest.mark.parametrize("model", ["baseline", "simclr"])
def test_model_end_to_end(tmp_path, model):
    metrics = train(compose_cfg(tmp_path, [f"model={model}", "trainer.max_epochs=2"]))
    saved = read_metrics(tmp_path)
    assert METRIC_KEYS <= saved.keys() and saved["model"] == model and saved["epochs"] == 2
    assert saved["test_acc"] == pytest.approx(metrics["test_acc"])
    assert list(saved["per_class_acc"]) == [f"class {i}" for i in range(9)] and saved["absent_classes"] == []
    # the reported accuracy is the one the predictions file recounts to
    rows = list(csv.DictReader((tmp_path / "test_predictions.csv").open()))
    assert len(rows) == 36
    assert saved["test_acc"] == pytest.approx(sum(r["label"] == r["pred"] for r in rows) / 36)
    # the tested checkpoint is the best one, and it carries the plain metadata inference needs
    # the baseline keeps its best-val-acc epoch; an SSL run its last epoch (a label-free choice, as the chain's stage)
    kept = "best-epoch" if model == "baseline" else "epoch001"
    assert Path(saved["ckpt_path"]).name.startswith(kept) and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    meta = read_metadata(load_checkpoint(saved["ckpt_path"]), saved["ckpt_path"])
    assert (meta.kind, meta.backbone, meta.num_classes, meta.image_size) == (model, "tiny", 9, 16)
    # TensorBoard: per-epoch curves (+ kNN monitor and SSL loss for SimCLR) and the Projector's embeddings
    expected = {"train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "test/auc"}
    if model == "simclr":
        expected |= {"val/knn_acc", "train/ssl_loss", "train/ssl_acc"}
        assert 0 < saved["val_knn_acc"] <= 1
    assert expected <= scalar_tags(tmp_path / "tb")
    (metadata,) = (tmp_path / "tb").rglob("metadata.tsv")
    assert len(metadata.read_text().splitlines()) == 36 and (metadata.parent / "sprite.png").is_file()


@pytest.mark.cli
def test_finetune_chains_from_the_ssl_stage(tmp_path):
    helpers.RECORDED.clear()
    cfg = compose_cfg(tmp_path, ["model=finetune", "+callbacks.record._target_=helpers.RecordBackbone"])
    metrics = train(cfg)
    (stage,) = (tmp_path / "pretrain").glob("simclr-*/")  # a run outside log_dir keeps its stage inside
    pre = read_metrics(stage)
    assert metrics["pretrained_ckpt"] == pre["ckpt_path"] and Path(pre["ckpt_path"]).is_file()
    assert pre["model"] == "simclr" and pre["run_name"] == "ssl-pretrain-simclr"
    # label-free choice: the stage's checkpoint is its last epoch, not the probe's best
    assert Path(pre["ckpt_path"]).name == "epoch000.ckpt" and pre["label_fraction"] == 1.0
    ssl_state = load_checkpoint(pre["ckpt_path"])["state_dict"]
    start = helpers.RECORDED["finetune"]
    assert start.keys() == {k.removeprefix("backbone.") for k in ssl_state if k.startswith("backbone.")}
    for key, value in start.items():
        assert torch.equal(value, ssl_state[f"backbone.{key}"]), key
    assert not all(torch.equal(helpers.RECORDED["simclr"][k], v) for k, v in start.items())  # SSL trained it
    assert (tmp_path / "report" / "results.md").is_file()


@pytest.mark.cli
def test_finetunes_share_one_pretraining_per_ssl_settings(tmp_path):
    shared = f"paths.pretrain_dir={tmp_path}/shared"
    first = train(compose_cfg(tmp_path / "a", ["model=finetune", shared, "data.label_fraction=0.5"]))
    second = train(compose_cfg(tmp_path / "b", ["model=probe", shared, "data.label_fraction=1.0"]))
    assert first["pretrained_ckpt"] == second["pretrained_ckpt"]
    assert len(list((tmp_path / "shared").glob("*/metrics.json"))) == 1
    third = train(compose_cfg(tmp_path / "c", ["model=finetune", shared, "pretrain.temperature=0.5"]))
    assert third["pretrained_ckpt"] != first["pretrained_ckpt"]


def test_finetune_from_given_checkpoint_and_linear_probe(tmp_path):
    ssl = train(compose_cfg(tmp_path / "ssl", ["model=simclr"]))
    helpers.RECORDED.clear()
    probe = train(
        compose_cfg(
            tmp_path / "probe",
            ["model=probe", f"model.pretrained_ckpt={ssl['ckpt_path']}", "+callbacks.record._target_=helpers.RecordBackbone"],
        )
    )
    assert probe["pretrained_ckpt"] == ssl["ckpt_path"] and probe["freeze_backbone"] is True
    assert not (tmp_path / "probe" / "pretrain").exists()
    final = load_checkpoint(probe["ckpt_path"])["state_dict"]
    for key, value in helpers.RECORDED["finetune"].items():
        assert torch.equal(value, final[f"backbone.{key}"]), f"frozen backbone changed: {key}"


@pytest.mark.cli
def test_multirun_baseline_and_simclr(tmp_path):
    result = run_command("-m", "model=baseline,simclr", *TINY, f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / "metrics.json").is_file())
    assert runs == ["0_baseline", "1_simclr"]


@pytest.mark.cli
def test_a_chain_with_only_hydra_run_dir_writes_nothing_in_the_current_dir(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run_command("model=finetune", *TINY, f"hydra.run.dir={tmp_path}/elsewhere/run", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(cwd.iterdir()) == []
    assert read_metrics(tmp_path / "elsewhere" / "run")["pretrained_ckpt"].startswith(
        f"{tmp_path}/elsewhere/run/pretrain/simclr-"
    )


def test_fast_dev_run_tests_the_weights_in_memory(tmp_path):
    result = run_command(*TINY, "+trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    assert metrics["ckpt_path"] is None and len(metrics["per_class_acc"]) == 9


def test_missing_pathmnist_fails_with_guidance(tmp_path):
    result = run_command("data=pathmnist", "data.download=false", f"paths.data_dir={tmp_path}/nodata", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data.download=false forbids fetching it" in result.stderr and "data.download=auto" in result.stderr
    assert f"{tmp_path}/nodata/pathmnist.npz" in result.stderr and "https://zenodo.org" in result.stderr
    assert "data.path=" in result.stderr and "data=synthetic" in result.stderr
    assert not list((tmp_path / "outputs").rglob("*.ckpt")) and not list((tmp_path / "outputs").rglob("metrics.json"))


@pytest.mark.cli
def test_help_lists_groups_without_importing_the_training_stack(tmp_path):
    """--help must answer at once: the entrypoint imports torch and Lightning only to train."""
    code = (
        "import sys; sys.argv = ['sslpath.train', '--help']\n"
        "import sslpath.train\n"
        "try:\n    sslpath.train.main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'torchvision') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path).stdout
    assert "HEAVY []" in out
    for text in ("Config groups", "model ", "experiment", "python -m sslpath.evaluate", "Examples"):
        assert text in out
    # the model line lists every conf/model option, read from the config folder (no hand-kept list)
    (model_line,) = [line for line in out.splitlines() if line.strip().startswith("model ")]
    options = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "model").glob("*.yaml"))
    assert model_line.split()[1:] == " | ".join(options).split()
    assert "paths" not in out.split("Config groups")[1].split("Examples")[0]  # internal groups hidden


def test_best_checkpoint_is_slim_last_is_resumable_and_keep_last_false_drops_it(tmp_path):
    metrics = train(compose_cfg(tmp_path / "keep", []))
    best, last = load_checkpoint(metrics["ckpt_path"]), load_checkpoint(tmp_path / "keep" / "checkpoints" / "last.ckpt")
    assert "optimizer_states" not in best and "loops" not in best and best["sslpath"]["kind"] == "baseline"
    assert "optimizer_states" in last and "loops" in last
    dropped = train(compose_cfg(tmp_path / "drop", ["callbacks.keep_last.keep=false"]))
    assert Path(dropped["ckpt_path"]).is_file() and not (tmp_path / "drop" / "checkpoints" / "last.ckpt").exists()
