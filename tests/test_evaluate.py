"""sslpath.evaluate: a run's best checkpoint on the run's own data gives the run's test results, in
the files a run dir holds; data that does not fit the checkpoint is refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from conftest import TINY_DATA, run_cli
from sslpath.data.download import class_names
from sslpath.errors import UserError
from sslpath.evaluate import evaluate
from sslpath.report import read_predictions
from test_predict import tiny_run

SYNTHETIC = [o for o in TINY_DATA if not o.startswith(("data.size", "data.batch_size"))]  # size comes from the checkpoint


def compose_evaluate(*overrides: str) -> DictConfig:
    """conf/evaluate.yaml with these overrides, as `python -m sslpath.evaluate` composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    return tiny_run(tmp_path_factory.mktemp("run"))


def test_reproduces_the_runs_test_results_and_files(trained, tmp_path, capsys):
    out = tmp_path / "eval"
    metrics = evaluate(compose_evaluate(f"ckpt={trained['ckpt']}", *SYNTHETIC, f"out={out}", "device=cpu"))
    run = trained["metrics"]
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["test_acc"] == run["test_acc"] and 0.5 < run["test_acc"] < 1
    assert metrics["per_class_acc"] == run["per_class_acc"] and metrics["absent_classes"] == run["absent_classes"]
    assert metrics["test_loss"] == pytest.approx(run["test_loss"], abs=1e-5)
    assert metrics["test_auc"] == pytest.approx(run["test_auc"], abs=1e-5)
    assert (metrics["model"], metrics["ckpt_path"], metrics["evaluated_split"]) == ("baseline", run["ckpt_path"], "test")
    assert metrics["num_images"] == 36 and metrics["data"]["size"] == 16 and metrics["data"]["test_count"] == 36

    ours, theirs = read_predictions(out / "test_predictions.csv"), read_predictions(trained["dir"] / "test_predictions.csv")
    assert ours[0] == theirs[0] and (ours[1] == theirs[1]).all() and (ours[2] == theirs[2]).all()
    with np.load(out / "test_examples.npz") as a, np.load(trained["dir"] / "test_examples.npz") as b:
        assert all((a[k] == b[k]).all() for k in ("index", "images", "labels"))
        assert np.abs(a["probs"] - b["probs"]).max() < 1e-5
    assert (out / "report" / "results.md").is_file()
    assert f"test_acc={run['test_acc']:.4f}" in capsys.readouterr().out


def test_cli_writes_a_fresh_run_dir_and_nothing_else(trained, tmp_path):
    """The default out is a new dir under paths.log_dir named after the time and the checkpoint."""
    result = run_cli(
        f"ckpt={trained['ckpt']}", *SYNTHETIC, "paths.log_dir=logs", "report=false", "device=cpu",
        cwd=tmp_path, module="sslpath.evaluate", timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["logs"]
    (out,) = (tmp_path / "logs" / "evaluations").iterdir()
    assert out.name.endswith(f"_{trained['ckpt'].stem}")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "test_examples.npz", "test_predictions.csv"]
    assert json.loads((out / "metrics.json").read_text())["test_acc"] == trained["metrics"]["test_acc"]


def relabelled(ckpt: Path, class_names: list[str], dest: Path) -> Path:
    """The checkpoint with other (valid) class names, as if trained on a data set that names its classes."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["sslpath"]["class_names"] = class_names
    torch.save(checkpoint, dest)
    return dest


def test_custom_npz_of_the_checkpoints_data_set(trained, tmp_path):
    """data.path=FILE with PathMNIST's class count is read as a cut of PathMNIST, e.g. the sample."""
    ckpt = relabelled(trained["ckpt"], class_names("pathmnist"), tmp_path / "pathmnist.ckpt")
    metrics = evaluate(compose_evaluate(f"ckpt={ckpt}", f"data.path={trained['npz']}", f"out={tmp_path / 'eval'}", "report=false"))
    assert metrics["test_acc"] == trained["metrics"]["test_acc"] and list(metrics["per_class_acc"]) == class_names("pathmnist")
    assert metrics["data"]["path"] == str(trained["npz"])


def test_data_that_names_no_classes_takes_the_checkpoints(trained, tmp_path):
    names = list("abcdefghi")
    ckpt = relabelled(trained["ckpt"], names, tmp_path / "named.ckpt")
    metrics = evaluate(compose_evaluate(f"ckpt={ckpt}", *SYNTHETIC, f"out={tmp_path / 'eval'}", "report=false"))
    assert list(metrics["per_class_acc"]) == names and metrics["test_acc"] == trained["metrics"]["test_acc"]
    assert read_predictions(tmp_path / "eval" / "test_predictions.csv")[0] == names


def test_other_split(trained, tmp_path):
    metrics = evaluate(compose_evaluate(f"ckpt={trained['ckpt']}", *SYNTHETIC, "split=val", f"out={tmp_path}", "report=false"))
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
        (["data=synthetic", "data.test_count=0"], "the test split of this data is empty"),
        (["data=synthetic", "out={tmp}/full"], "out={tmp}/full already exists and is not empty"),
        (["data=synthetic", "out={tmp}/full/a.txt"], "out={tmp}/full/a.txt already exists and is a file"),
    ],
)
def test_data_and_settings_that_do_not_fit_are_refused(trained, tmp_path, overrides, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.txt").write_text("someone else's file")
    fill = {"ckpt": trained["ckpt"], "tmp": tmp_path}
    cfg = compose_evaluate(f"ckpt={trained['ckpt']}", f"paths.log_dir={tmp_path}/logs", *(o.format(**fill) for o in overrides))
    with pytest.raises(UserError) as err:
        evaluate(cfg)
    assert message.format(**fill) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "logs").exists() and sorted(p.name for p in (tmp_path / "full").iterdir()) == ["a.txt"]


def test_missing_ckpt(tmp_path):
    with pytest.raises(UserError, match="missing ckpt=PATH"):
        evaluate(compose_evaluate("data=synthetic", f"paths.log_dir={tmp_path}"))
