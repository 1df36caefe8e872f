"""Run comparison: each run's hparams summary (settings linked to results) reads back from
TensorBoard, the other loggers work, the debug presets run, and the console stays free of
third-party noise."""

import csv
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from factories import TINY, read_metrics, run_command


def hparams_summary(tb_dir: Path) -> tuple[dict, dict]:
    """(settings of the HPARAMS session, final hp/* scalars) read back from a run's event files."""
    settings: dict = {}
    scalars: dict = {}
    for events in tb_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        try:
            plugins = acc.PluginTagToContent("hparams")
        except KeyError:  # this event file holds no hparams session
            plugins = {}
        for content in plugins.values():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                for key, value in data.session_start_info.hparams.items():
                    settings[key] = value.number_value if value.HasField("number_value") else value.string_value
        for tag in acc.Tags()["scalars"]:
            if tag.startswith("hp/"):
                scalars[tag] = acc.Scalars(tag)[-1].value
    return settings, scalars


@pytest.mark.cli
def test_multirun_hparams_summaries_read_back(tmp_path):
    result = run_command(
        "-m",
        "model=baseline",
        "optimizer.lr=0.001,0.002,0.004",
        *TINY,
        f"hydra.sweep.dir={tmp_path}/sweep",
        f"paths.log_dir={tmp_path}/logs",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if (p / "metrics.json").is_file())
    assert len(jobs) == 3
    seen_lr = []
    for job in jobs:
        settings, scalars = hparams_summary(job / "tb")
        metrics = read_metrics(job)
        assert settings["model"] == "baseline" and settings["method"] == "Supervised" and settings["backbone"] == "tiny"
        assert settings["batch_size"] == 24 and settings["seed"] == 42 and settings["label_fraction"] == 1.0
        assert scalars["hp/test_acc"] == pytest.approx(metrics["test_acc"])
        assert scalars["hp/best_val_acc"] == pytest.approx(metrics["best_val_acc"])
        assert scalars["hp/test_auc"] == pytest.approx(metrics["test_auc"])
        seen_lr.append(settings["lr"])
    assert sorted(seen_lr) == pytest.approx([0.001, 0.002, 0.004])


@pytest.mark.cli
def test_many_loggers(tmp_path):
    result = run_command(
        *TINY, "logger=many_loggers", f"hydra.run.dir={tmp_path}/run", f"paths.log_dir={tmp_path}/logs", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    assert any(r.get("val/acc") for r in rows) and any(r.get("hp/test_acc") for r in rows)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/logs/mlflow.db")
    (run,) = client.search_runs(client.get_experiment_by_name("sslpath").experiment_id)
    assert run.data.metrics["hp/test_acc"] == pytest.approx(read_metrics(tmp_path / "run")["test_acc"])
    assert run.data.params["model"] == "baseline" and run.data.params["backbone"] == "tiny"
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("preset", ["fdr", "limit", "profiler"])
def test_debug_presets_finish(tmp_path, preset):
    result = run_command(
        *TINY, f"debug={preset}", f"hydra.run.dir={tmp_path}/run", f"paths.log_dir={tmp_path}/logs", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    assert (metrics["ckpt_path"] is None) == (preset == "fdr")
    if preset == "profiler":
        assert list((tmp_path / "run").glob("*profile*"))


NOISE = ("💡 Tip", "LeafSpec", "Directory watcher", "log_every_n_steps", "Traceback")


def test_a_default_run_prints_no_third_party_noise_and_logs_each_epoch(tmp_path):
    result = run_command(
        *TINY, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}/run", f"paths.log_dir={tmp_path}/logs", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert not [n for n in NOISE if n in output], output[-3000:]
    assert f"run dir: {tmp_path}/run" in output
    log = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log and "val/acc=" in log
