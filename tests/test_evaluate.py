"""sslpath.evaluate: a run's best checkpoint on the run's own data gives the run's test results, in
the files a run dir holds; data that does not fit the checkpoint is refused before any work."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sslpath.core.errors import UserError
from sslpath.data.corruptions import load_suite
from sslpath.data.download import class_names
from sslpath.evaluation.evaluate import evaluate, load_split, predict_split
from sslpath.reporting.runs import read_predictions
from sslpath.results.metrics import classification_results
from sslpath.training.hydra_callbacks import SweepRobustness

from factories import SYNTHETIC, compose_evaluate, run_command, run_main


def test_reproduces_the_runs_test_results_and_files(tiny_trained, tmp_path, capsys):
    out = tmp_path / "eval"
    metrics = evaluate(compose_evaluate(f"ckpt={tiny_trained['ckpt']}", *SYNTHETIC, f"out={out}", "device=cpu"))
    run = tiny_trained["metrics"]
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["test_acc"] == run["test_acc"] and 0.5 < run["test_acc"] < 1
    assert metrics["per_class_acc"] == run["per_class_acc"] and metrics["absent_classes"] == run["absent_classes"]
    assert metrics["test_loss"] == pytest.approx(run["test_loss"], abs=1e-5)
    assert metrics["test_auc"] == pytest.approx(run["test_auc"], abs=1e-5)
    assert (metrics["model"], metrics["ckpt_path"], metrics["evaluated_split"]) == ("baseline", run["ckpt_path"], "test")
    assert metrics["num_images"] == 36 and metrics["data"]["size"] == 16 and metrics["data"]["test_count"] == 36

    ours, theirs = read_predictions(out / "test_predictions.csv"), read_predictions(tiny_trained["dir"] / "test_predictions.csv")
    assert ours[0] == theirs[0] and (ours[1] == theirs[1]).all() and (ours[2] == theirs[2]).all()
    with np.load(out / "test_examples.npz") as a, np.load(tiny_trained["dir"] / "test_examples.npz") as b:
        assert all((a[k] == b[k]).all() for k in ("index", "images", "labels"))
        assert np.abs(a["probs"] - b["probs"]).max() < 1e-5
    assert (out / "report" / "results.md").is_file()
    assert f"test_acc={run['test_acc']:.4f}" in capsys.readouterr().out


def test_cli_writes_a_fresh_run_dir_and_nothing_else(tiny_trained, tmp_path):
    """The default out is a new dir under paths.log_dir named after the time and the checkpoint."""
    result = run_command(
        f"ckpt={tiny_trained['ckpt']}",
        *SYNTHETIC,
        "paths.log_dir=logs",
        "report=false",
        "device=cpu",
        cwd=tmp_path,
        module="sslpath.evaluate",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["logs"]
    (out,) = (tmp_path / "logs" / "evaluations").iterdir()
    assert out.name.endswith(f"_{tiny_trained['ckpt'].stem}")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "test_examples.npz", "test_predictions.csv"]
    assert json.loads((out / "metrics.json").read_text())["test_acc"] == tiny_trained["metrics"]["test_acc"]


def relabelled(ckpt: Path, class_names: list[str], dest: Path) -> Path:
    """The checkpoint with other (valid) class names, as if trained on a data set that names its classes."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["sslpath"]["class_names"] = class_names
    torch.save(checkpoint, dest)
    return dest


def test_custom_npz_of_the_checkpoints_data_set(tiny_trained, tmp_path):
    """data.path=FILE with PathMNIST's class count is read as a cut of PathMNIST, e.g. the sample."""
    ckpt = relabelled(tiny_trained["ckpt"], class_names("pathmnist"), tmp_path / "pathmnist.ckpt")
    cfg = compose_evaluate(f"ckpt={ckpt}", f"data.path={tiny_trained['npz']}", f"out={tmp_path / 'eval'}", "report=false")
    metrics = evaluate(cfg)
    assert metrics["test_acc"] == tiny_trained["metrics"]["test_acc"] and list(metrics["per_class_acc"]) == class_names(
        "pathmnist"
    )
    assert metrics["data"]["path"] == str(tiny_trained["npz"])


def test_data_that_names_no_classes_takes_the_checkpoints(tiny_trained, tmp_path):
    names = list("abcdefghi")
    ckpt = relabelled(tiny_trained["ckpt"], names, tmp_path / "named.ckpt")
    metrics = evaluate(compose_evaluate(f"ckpt={ckpt}", *SYNTHETIC, f"out={tmp_path / 'eval'}", "report=false"))
    assert list(metrics["per_class_acc"]) == names and metrics["test_acc"] == tiny_trained["metrics"]["test_acc"]
    assert read_predictions(tmp_path / "eval" / "test_predictions.csv")[0] == names


def test_other_split(tiny_trained, tmp_path):
    metrics = evaluate(
        compose_evaluate(f"ckpt={tiny_trained['ckpt']}", *SYNTHETIC, "split=val", f"out={tmp_path}", "report=false")
    )
    assert metrics["evaluated_split"] == "val" and metrics["num_images"] == 36


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data=synthetic", "data.size=28"], "data.size=28, but {ckpt} was trained on 16 px tiles. Leave data.size unset"),
        (["data=synthetic", "data.num_classes=4"], "{ckpt} classifies 9 classes (class 0, class 1,"),
        (["data=pathmnist"], "but the data has 9 (adipose, background,"),
        (["data=synthetic", "split=holdout"], "split=holdout is not one of train, val, test"),
        (["data=synthetic", "report=maybe"], "report=maybe is not true or false"),
        (["data=synthetic", "run_name=' '"], "run_name is empty"),
        (["data=synthetic", "device=cuda:99"], "device=cuda:99"),
        (["data=synthetic", "data.eval_batch_size=0"], "data.eval_batch_size=0 is not a positive integer"),
        # training's data schema now refuses it before any data is made (was: "the test split of this data is empty")
        (["data=synthetic", "data.test_count=0"], "data.test_count=0 is not valid: it must be an integer >= 1"),
        (["data=synthetic", "out={tmp}/full"], "out={tmp}/full already exists and is not empty"),
        (["data=synthetic", "out={tmp}/full/a.txt"], "out={tmp}/full/a.txt already exists and is a file"),
    ],
)
def test_data_and_settings_that_do_not_fit_are_refused(tiny_trained, tmp_path, overrides, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.txt").write_text("someone else's file")
    fill = {"ckpt": tiny_trained["ckpt"], "tmp": tmp_path}
    cfg = compose_evaluate(
        f"ckpt={tiny_trained['ckpt']}", f"paths.log_dir={tmp_path}/logs", *(o.format(**fill) for o in overrides)
    )
    with pytest.raises(UserError) as err:
        evaluate(cfg)
    assert message.format(**fill) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "logs").exists() and sorted(p.name for p in (tmp_path / "full").iterdir()) == ["a.txt"]


def test_missing_ckpt(tmp_path):
    with pytest.raises(UserError, match="missing ckpt=PATH"):
        evaluate(compose_evaluate("data=synthetic", f"paths.log_dir={tmp_path}"))


# ----------------------------------------------------------------------------------------------
# corruptions=pathology: the robustness benchmark


ROBUSTNESS_FILES = ["robustness.csv", "robustness.json", "robustness.md", "robustness.png"]


@pytest.fixture(scope="module")
def robust(tiny_trained, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("robust") / "eval"
    cfg = compose_evaluate(f"ckpt={tiny_trained['ckpt']}", *SYNTHETIC, f"out={out}", "device=cpu", "corruptions=pathology")
    metrics = evaluate(cfg)
    return {"out": out, "metrics": metrics, "record": json.loads((out / "robustness.json").read_text())}


def test_corruption_benchmark_writes_its_table_and_figure(tiny_trained, robust):
    out, metrics, record = robust["out"], robust["metrics"], robust["record"]
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert set(ROBUSTNESS_FILES) <= {p.name for p in out.iterdir()}
    assert {p.name for p in (out / "report").glob("robustness.*")} == set(ROBUSTNESS_FILES) - {"robustness.json"}
    assert (out / "report" / "results.md").is_file() and (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"

    rows = record["rows"]
    assert [(r["corruption"], r["severity"]) for r in rows[:2]] == [("clean", 0), ("stain_shift", 1)] and len(rows) == 1 + 11 * 5
    # the clean row is the evaluation's (and the training run's) test accuracy, exactly
    assert rows[0]["acc"] == metrics["test_acc"] == tiny_trained["metrics"]["test_acc"] and rows[0]["auc"] == metrics["test_auc"]
    summary = metrics["robustness"]
    assert summary == record["summary"] and summary["num_images"] == 36 and len(summary["corruptions"]) == 11
    assert summary["mean_corruption_acc"] == pytest.approx(np.mean([r["acc"] for r in rows[1:]]))
    assert summary["relative_drop"] == pytest.approx(1 - summary["mean_corruption_acc"] / metrics["test_acc"])

    with (out / "robustness.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and float(table[0]["acc"]) == metrics["test_acc"]
    assert (table[-1]["corruption"], table[-1]["severity"], table[-1]["param"]) == ("gaussian_noise", "5", "0.26")
    md = (out / "robustness.md").read_text()
    assert "| stain_shift |" in md and "| **mean** |" in md and "![robustness](robustness.png)" in md
    assert f"Clean accuracy {100 * metrics['test_acc']:.1f}%" in md


def test_severity_zero_reproduces_the_clean_evaluation_exactly(tiny_trained):
    cfg = compose_evaluate(f"ckpt={tiny_trained['ckpt']}", *SYNTHETIC, "corruptions=pathology", "device=cpu")
    suite, batch = load_suite(cfg.corruptions), cfg.data.eval_batch_size
    meta, split, predict = load_split(cfg, tiny_trained["ckpt"], torch.device("cpu"))
    clean = predict_split(predict, split.images, batch)
    assert classification_results(clean, split.labels, meta.class_names)["test_acc"] == tiny_trained["metrics"]["test_acc"]
    for name in suite.names:
        assert torch.equal(predict_split(predict, suite.corrupt(split.images, name, 0), batch), clean), name
        assert not torch.equal(predict_split(predict, suite.corrupt(split.images, name, 5), batch), clean), name


def test_unknown_corruption_exits_2_before_any_work(tiny_trained, tmp_path):
    result = run_command(
        f"ckpt={tiny_trained['ckpt']}",
        *SYNTHETIC,
        "corruptions=pathology",
        "corruptions.names=[fog,jpeg_compression]",
        f"out={tmp_path / 'eval'}",
        "device=cpu",
        cwd=tmp_path,
        module="sslpath.evaluate",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "sslpath.evaluate: error: corruptions.names lists fog, not among the configured corruptions" in result.stderr
    assert "Choose from stain_shift, brightness_up" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("corruptions.severities=[0,1]", "corruptions.severities=[0, 1] is not a list of distinct integers from 1 to 5"),
        ("corruptions.params.pixelate=[0.8]", "corruptions.params.pixelate=[0.8] is not a list of 5 parameters"),
        ("+corruptions.params.fog=[1,2,3,4,5]", "corruptions.params names unknown corruptions: fog"),
    ],
)
def test_bad_corruption_settings_are_refused(tiny_trained, tmp_path, override, message):
    cfg = compose_evaluate(f"ckpt={tiny_trained['ckpt']}", *SYNTHETIC, "corruptions=pathology", override, f"out={tmp_path / 'e'}")
    with pytest.raises(UserError, match=re.escape(message)):
        evaluate(cfg)
    assert not (tmp_path / "e").exists()


def test_robustness_report_compares_models_on_the_same_corruptions(tiny_trained, robust, tmp_path):
    probe = tmp_path / "probe"
    evaluate(
        compose_evaluate(
            f"ckpt={tiny_trained['ckpt']}",
            *SYNTHETIC,
            f"out={probe}",
            "device=cpu",
            "report=false",
            "corruptions=pathology",
            "run_name=probe",
        )
    )
    run_main("sslpath.robustness_report", str(robust["out"]), str(probe), "--out", str(tmp_path / "cmp"))
    md = (tmp_path / "cmp" / "robustness_comparison.md").read_text()
    assert "| baseline | " in md and "| probe | " in md and "| 0 (clean) |" in md
    assert (tmp_path / "cmp" / "robustness_comparison.png").is_file()
    assert len((tmp_path / "cmp" / "robustness_comparison.csv").read_text().splitlines()) == 1 + 2 * (1 + 11 * 5)

    subset = tmp_path / "subset"
    evaluate(
        compose_evaluate(
            f"ckpt={tiny_trained['ckpt']}",
            *SYNTHETIC,
            f"out={subset}",
            "device=cpu",
            "report=false",
            "corruptions=pathology",
            "corruptions.names=[jpeg_compression]",
        )
    )
    with pytest.raises(SystemExit) as exit_info:
        run_main("sslpath.robustness_report", str(robust["out"]), str(subset), "--out", str(tmp_path / "bad"))
    assert exit_info.value.code == 2 and not (tmp_path / "bad").exists()


def test_sweep_callback_benchmarks_each_jobs_best_checkpoint(tiny_trained, tmp_path):
    """experiment=robustness's Hydra callback, on a sweep dir holding the tiny run as its job 0."""
    sweep = tmp_path / "sweep"
    job = sweep / "0_baseline"
    job.mkdir(parents=True)
    for name in ("metrics.json", "config.yaml"):
        shutil.copy(tiny_trained["dir"] / name, job / name)
    suite = {"params": {"jpeg_compression": [50, 30, 15, 10, 7], "stain_shift": [0.05, 0.1, 0.15, 0.2, 0.25]}}
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "robustness": suite})
    SweepRobustness(device="cpu").on_multirun_end(config)
    assert sorted(p.name for p in (job / "robustness").iterdir()) == ROBUSTNESS_FILES
    record = json.loads((job / "robustness" / "robustness.json").read_text())
    assert record["rows"][0]["acc"] == tiny_trained["metrics"]["test_acc"]
    assert record["summary"]["corruptions"] == list(suite["params"])
    assert "| baseline | " in (sweep / "robustness" / "robustness_comparison.md").read_text()
