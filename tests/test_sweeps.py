"""Sweeps: results per (model, label fraction), the label-efficiency experiment, Optuna search."""

from __future__ import annotations

import csv
import importlib
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image
from scipy.stats import t
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sslpath.checks.validate import check_optimized_metric
from sslpath.core.errors import UserError
from sslpath.reporting.figures import label_efficiency_figure
from sslpath.reporting.runs import load_run
from sslpath.reporting.tables import group_runs
from sslpath.reporting.write import write_sweep_results
from sslpath.training.hydra_callbacks import SweepReport, job_order

from factories import TINY, compose_cfg, fake_run, run_command

CLASSES = ["c0", "c1", "c2"]

# ----------------------------------------------------------------------------------------------
# Aggregation on hand-made sweep dirs: known numbers in, their mean ± std out


def fake_sweep(root: Path, fractions: tuple[float, ...], seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """Jobs in the order the basic sweeper launches them (model, fraction, seed); returns the numbers."""
    rng = np.random.default_rng(7)
    numbers: dict[tuple[str, float], list[tuple[float, float]]] = {}
    job = 0
    for model in ("baseline", "finetune"):
        for fraction in fractions:
            for seed in seeds:
                right = int(rng.integers(20, 90))
                acc = right / 100  # what the 100 predictions recount to
                run = fake_run(
                    root / f"{job}_{model}", model=model, seed=seed, fraction=fraction, right=right, n=100, classes=CLASSES
                )
                auc = json.loads((run / "metrics.json").read_text())["test_auc"]  # what the predictions give
                numbers.setdefault((model, fraction), []).append((acc, auc))
                job += 1
    return numbers


def end_sweep(sweep: Path) -> None:
    SweepReport().on_multirun_end(OmegaConf.create({"report": True, "hydra": {"sweep": {"dir": str(sweep)}}}))


def markdown_rows(path: Path) -> list[list[str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.cli
def test_sweep_results_mean_std_per_model_and_label_fraction(tmp_path):
    sweep = tmp_path / "sweep"
    numbers = fake_sweep(sweep, (0.01, 0.1, 1.0))
    end_sweep(sweep)

    with (sweep / "sweep_results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], float(r["label_fraction"])) for r in rows] == list(numbers)  # launch order, 12 jobs
    for row in rows:
        values = numbers[row["model"], float(row["label_fraction"])]
        accs, aucs = [v[0] for v in values], [v[1] for v in values]
        assert row["n"] == "3"
        assert float(row["test_acc_mean"]) == pytest.approx(statistics.mean(accs), abs=1e-12)
        assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-12)
        assert float(row["test_auc_mean"]) == pytest.approx(statistics.mean(aucs), abs=1e-12)
        assert float(row["test_auc_std"]) == pytest.approx(statistics.stdev(aucs), abs=1e-12)

    table = markdown_rows(sweep / "sweep_results.md")
    assert table[0] == ["Model", "Label fraction", "n", "Test accuracy (%)", "Test AUC"]
    cells = {(row[0], row[1]): row for row in table[2:]}
    assert list(cells) == [(m, f) for m in ("baseline", "finetune") for f in ("0.01", "0.1", "1")]
    accs = [v[0] for v in numbers["finetune", 0.1]]
    aucs = [v[1] for v in numbers["finetune", 0.1]]

    def cell(values: list[float], scale: float, digits: int) -> str:  # mean ± std [Student-t 95 % interval], 3 seeds
        mean, std = scale * statistics.mean(values), scale * statistics.stdev(values)
        half = t.ppf(0.975, len(values) - 1) * std / len(values) ** 0.5
        return f"{mean:.{digits}f} ± {std:.{digits}f} [{mean - half:.{digits}f}, {mean + half:.{digits}f}]"

    assert cells["finetune", "0.1"][2:] == ["3", cell(accs, 100, 2), cell(aucs, 1, 4)]

    figure = sweep / "report" / "label_efficiency.png"
    assert "](report/label_efficiency.png)" in (sweep / "sweep_results.md").read_text()
    with Image.open(figure) as image:
        assert image.format == "PNG" and len(np.unique(np.asarray(image.convert("L")))) > 10
    assert (sweep / "report" / "results.md").is_file()  # the comparison report is still written


def test_label_efficiency_figure_plots_mean_and_t_interval_on_log_x(tmp_path):
    numbers = fake_sweep(tmp_path, (0.01, 0.1, 1.0))
    groups = group_runs([load_run(job) for job in sorted(tmp_path.iterdir(), key=job_order)])
    ax = label_efficiency_figure(groups).axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "label fraction (log scale)"  # no train_labels_per_class
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["chance (1/3)", "baseline (n=3)", "finetune (n=3)"]
    for container, model in zip(ax.containers, ("baseline", "finetune")):
        line, _, (bars,) = container
        stats = [numbers[model, f] for f in (0.01, 0.1, 1.0)]
        means = [100 * statistics.mean(v[0] for v in s) for s in stats]
        stds = [100 * statistics.stdev(v[0] for v in s) for s in stats]
        np.testing.assert_allclose(line.get_xydata(), np.c_[[0.01, 0.1, 1.0], means])
        widths = 2 * t.ppf(0.975, 2) * np.array(stds) / 3**0.5  # the Student-t 95 % interval over the 3 seeds
        np.testing.assert_allclose([seg[1][1] - seg[0][1] for seg in bars.get_segments()], widths)


def test_one_label_fraction_gives_a_table_without_figure(tmp_path):
    sweep = tmp_path / "sweep"
    fake_sweep(sweep, (1.0,), seeds=(0,))
    write_sweep_results([load_run(job) for job in sorted(sweep.iterdir(), key=job_order)], sweep, sweep / "report")
    with (sweep / "sweep_results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["n"], r["test_acc_std"]) for r in rows] == [("baseline", "1", ""), ("finetune", "1", "")]
    assert not (sweep / "report" / "label_efficiency.png").exists()
    assert "label_efficiency" not in (sweep / "sweep_results.md").read_text()


def test_job_dirs_in_launch_order():
    assert sorted([Path("10_a"), Path("2_b"), Path("1_c")], key=job_order) == [Path("1_c"), Path("2_b"), Path("10_a")]


# ----------------------------------------------------------------------------------------------
# The label-efficiency experiment


def compose_with_hydra(tmp_path: Path, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        return compose("train", overrides=[f"paths.log_dir={tmp_path}", *overrides], return_hydra_config=True)


def test_label_efficiency_experiment_config(tmp_path):
    cfg = compose_with_hydra(tmp_path, ["experiment=label_efficiency"])
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == {
        "model": "baseline,finetune",
        "data.label_fraction": "0.01,0.1,1.0",
        "seed": "0,1,2",
    }
    assert cfg.trainer.max_epochs >= 10
    assert (cfg.budget, cfg.selection) == ("steps", "last")  # every fraction the same steps, no validation label picks


# The label-efficiency protocol on 16 px synthetic tiles: 10 training and 10 validation images per class, batch 24,
# so the whole training split is 90 // 24 = 3 steps an epoch, and 10 % of it (one image per class) 1 step.
PROTOCOL = ["data.train_count=90", "data.val_count=90", "data.label_fraction=0.1", "trainer.max_epochs=2"]


@pytest.mark.parametrize("budget, steps", [("epochs", 2), ("steps", 6)])
def test_step_budget_gives_low_fractions_the_full_splits_steps(tmp_path, budget, steps):
    """budget=steps: 10 % of the labels trains as many optimiser steps as 2 epochs of the whole split (6), not 2."""
    from sslpath.training.fit import train

    metrics = train(compose_cfg(tmp_path, [*PROTOCOL, f"budget={budget}"]))
    assert (metrics["optimizer_steps"], metrics["epochs"], metrics["budget"]) == (steps, steps, budget)
    assert metrics["train_labels_per_class"] == 1.0


@pytest.mark.parametrize("selection, val_images", [("best_val", 90), ("val_subset", 9), ("last", 0)])
def test_selection_uses_no_more_validation_labels_than_allowed(tmp_path, selection, val_images):
    """val_subset validates on the fraction's share of the validation split (one image per class here); last tests
    the last epoch's checkpoint, which no validation label chose."""
    from sslpath.training.fit import train

    metrics = train(compose_cfg(tmp_path, [*PROTOCOL, f"selection={selection}"]))
    assert (metrics["selection"], metrics["selection_val_images"]) == (selection, val_images)
    assert (metrics["best_val_acc"] is None) is (selection == "last")
    if selection == "last":
        assert Path(metrics["ckpt_path"]).name == "epoch001.ckpt"  # epochs 0 and 1: the newest


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["budget=weeks"], "budget='weeks' is not valid: it must be one of epochs, steps"),
        (["selection=best"], "selection='best' is not valid: it must be one of best_val, val_subset, last"),
        (["selection=val_subset", "data.label_fraction=0.1"], "keeps no label of class 0 (4 validation images); raise"),
    ],
)
def test_bad_protocol_settings_are_refused(tmp_path, overrides, message):
    from sslpath.training.fit import train

    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(compose_cfg(tmp_path, overrides))


@pytest.mark.cli
def test_label_efficiency_pretrains_once_per_seed(tmp_path):
    """Two label fractions of one seed: one SSL stage, reused (and logged as such) by the second job."""
    result = run_command(
        "experiment=label_efficiency",
        "model=finetune",
        "data.label_fraction=0.5,1.0",
        "seed=0",
        *TINY,
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (stage,) = (tmp_path / "sweep" / "pretrain").glob("*/metrics.json")  # the sweep's jobs share it
    ckpt = json.loads(stage.read_text())["ckpt_path"]
    jobs = [json.loads((tmp_path / "sweep" / job / "metrics.json").read_text()) for job in ("0_finetune", "1_finetune")]
    assert [job["label_fraction"] for job in jobs] == [0.5, 1.0]
    assert all(job["pretrained_ckpt"] == ckpt for job in jobs)
    assert result.stdout.count("pretraining SSL first") == 1 and result.stdout.count("reusing SSL pretraining") == 1
    assert f"reusing SSL pretraining {ckpt}" in (tmp_path / "sweep" / "1_finetune" / "train.log").read_text()
    rows = markdown_rows(tmp_path / "sweep" / "sweep_results.md")
    assert [row[:3] for row in rows[2:]] == [["finetune", "0.5", "1"], ["finetune", "1", "1"]]
    assert (tmp_path / "sweep" / "report" / "label_efficiency.png").is_file()


def test_one_percent_of_the_real_sample_keeps_a_label_per_class(sample_npz):
    from sslpath.data.splits import stratified_subset

    with np.load(sample_npz) as data:
        labels = torch.from_numpy(data["train_labels"].reshape(-1).astype(np.int64))
    for seed in range(3):
        kept = labels[stratified_subset(labels, 0.01, 9, seed)]
        assert torch.bincount(kept, minlength=9).min() >= 1
    # the smallest class has 58 images: 0.009 still keeps one, 0.0085 keeps none and is refused
    assert torch.bincount(labels[stratified_subset(labels, 0.009, 9, 0)], minlength=9).min() == 1
    with pytest.raises(UserError, match="keeps no label"):
        stratified_subset(labels, 0.0085, 9, 0)


# ----------------------------------------------------------------------------------------------
# optimized_metric and Optuna


@pytest.mark.parametrize(
    "model, valid",
    [
        ("baseline", ["val/acc", "val/loss"]),
        ("finetune", ["val/acc", "val/loss"]),
        ("probe", ["val/acc", "val/loss"]),
        ("ssl", ["val/acc", "val/loss", "val/knn_acc"]),
    ],
)
def test_optimized_metric_names_per_model(tmp_path, model, valid):
    cfg = compose_cfg(tmp_path, [f"model={model}"])
    for name in valid:
        cfg.optimized_metric = name
        check_optimized_metric(cfg)  # accepted
    for name in {"val/nope", "val/knn_acc", "test/acc", "train/loss"} - set(valid):
        cfg.optimized_metric = name
        with pytest.raises(UserError) as err:
            check_optimized_metric(cfg)
        assert f"optimized_metric={name} " in str(err.value) and f"valid names for this model: {', '.join(valid)}." in str(
            err.value
        )


def test_main_returns_the_optimized_metric(tmp_path):
    returned = importlib.import_module("sslpath.train").main.__wrapped__(
        compose_cfg(tmp_path, ["model=baseline", "trainer.max_epochs=2", "optimized_metric=val/loss"])
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    val_loss = [e.value for e in events.Scalars("val/loss")]
    val_acc = [e.value for e in events.Scalars("val/acc")]
    assert len(val_loss) == 2
    # not monitored by the checkpoint callback: its last value; val/acc, monitored: its best
    assert returned == pytest.approx(val_loss[-1]) and returned == metrics["optimized_value"]
    assert metrics["optimized_metric"] == "val/loss" and metrics["best_val_acc"] == pytest.approx(max(val_acc))


@pytest.mark.cli
def test_optuna_search_writes_best_params(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[sweeps]'")
    tiny = [o for o in TINY if not o.startswith("data.batch_size=")]  # batch size stays in the search space
    result = run_command(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        *tiny,
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    params = dict(best.best_params)
    assert set(params) == {"optimizer.lr", "optimizer.weight_decay", "pretrain.temperature", "data.batch_size"}
    assert 1e-4 <= params["optimizer.lr"] <= 1e-2 and params["data.batch_size"] in (64, 128, 256, 512)
    trials = sorted((tmp_path / "sweep").glob("*/metrics.json"), key=lambda p: job_order(p.parent))
    assert len(trials) == 3
    values = [json.loads(t.read_text())["optimized_value"] for t in trials]
    assert best.best_value == pytest.approx(max(values))  # main() returned each trial's val/acc; maximised
    winners = [t.parent for t, v in zip(trials, values) if v == pytest.approx(best.best_value)]
    configs = [OmegaConf.load(w / "config.yaml") for w in winners]
    assert any(c.optimizer.lr == params["optimizer.lr"] and c.data.batch_size == params["data.batch_size"] for c in configs)


def test_wrong_optimized_metric_fails_before_training(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[sweeps]'")
    result = run_command(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "model=finetune",
        "optimized_metric=val/nope",
        *TINY,
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "sslpath.train: error: optimized_metric=val/nope is not a validation metric that FineTune logs" in result.stderr
    assert "valid names for this model: val/acc, val/loss." in result.stderr
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.json"))
    assert not (tmp_path / "sweep" / "pretrain").exists()  # not even the SSL stage started
