"""The slow tier: real-size ResNet-18 runs end to end (`python -m pytest -m slow`; minutes on 2 CPU cores)."""

import pytest

from factories import read_metrics, run_cli

pytestmark = pytest.mark.slow

CPU = ["trainer=cpu", "callbacks.progress_bar.refresh_rate=0", "+trainer.enable_model_summary=false"]


def test_resnet18_baseline_learns_on_the_real_sample(tmp_path, sample_npz):
    result = run_cli(
        "model=baseline",
        f"data.path={sample_npz}",
        "trainer.max_epochs=3",
        *CPU,
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    # 9 tissue classes (chance 11%): three epochs on 701 real tiles already separate most of them
    assert metrics["test_acc"] > 0.4 and metrics["test_auc"] > 0.8
    assert metrics["per_class_acc"]["adipose"] is not None and metrics["absent_classes"] == []


def test_reference_experiment_end_to_end(tmp_path):
    """The notebook's three models (baseline, joint SimCLR with a clean view, fine-tune) with the
    reference ResNet-18 stem at 28 px, chained, reported, one epoch each."""
    result = run_cli(
        "experiment=reference",
        "data=synthetic",
        "data.train_count=192",
        "data.val_count=64",
        "data.test_count=64",
        "data.batch_size=32",
        "trainer.max_epochs=1",
        *CPU,
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    baseline, finetune = read_metrics(tmp_path / "sweep" / "0_baseline"), read_metrics(tmp_path / "sweep" / "1_finetune")
    (stage,) = (tmp_path / "sweep" / "pretrain").glob("simclr-*/")
    assert finetune["pretrained_ckpt"] == read_metrics(stage)["ckpt_path"]
    assert baseline["model"] == "baseline" and finetune["model"] == "finetune"
    results = (tmp_path / "sweep" / "report" / "results.md").read_text()
    assert "baseline" in results and "finetune" in results and "ssl-pretrain" in results
