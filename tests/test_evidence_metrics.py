"""Intervals and calibration in metrics.json: a training run's and sslpath.evaluate's (issue 18)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sslpath.checks.validate import validate
from sslpath.core.errors import UserError
from sslpath.evaluation.evaluate import evaluate
from sslpath.reporting.runs import read_predictions
from sslpath.results import stats
from sslpath.results.calibration import expected_calibration_error
from sslpath.training.fit import train

from factories import SYNTHETIC, compose_cfg, compose_evaluate

EVAL = ["eval.bootstrap_resamples=2000", "eval.ci_level=0.9", "eval.bootstrap_seed=3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("run")
    metrics = train(compose_cfg(out, ["model=baseline", "trainer.max_epochs=2", "optimizer.lr=0.01", *EVAL]))
    return {"dir": out, "metrics": metrics}


def test_training_run_records_intervals_balanced_accuracy_and_ece(run):
    metrics = json.loads((run["dir"] / "metrics.json").read_text())
    assert metrics["bootstrap"] == {"resamples": 2000, "seed": 3, "level": 0.9} and metrics["ece_bins"] == 15
    for key, point in (("test_acc_ci", "test_acc"), ("test_balanced_acc_ci", "test_balanced_acc"), ("test_auc_ci", "test_auc")):
        lo, hi = metrics[key]
        assert 0 <= lo <= hi <= 1 and lo - 1e-6 <= metrics[point] <= hi + 1e-6, key  # test_acc is float32
    # Recomputed from the run's own test_predictions.csv: the same numbers.
    _, labels, preds, probs = read_predictions(run["dir"] / "test_predictions.csv")
    assert metrics["test_balanced_acc"] == pytest.approx(stats.balanced_accuracy(labels, preds))
    ci = stats.bootstrap_intervals(labels, probs, stats.Bootstrap(2000, 3, 0.9))
    assert metrics["test_acc_ci"] == pytest.approx(list(ci["acc"]))
    assert metrics["test_auc_ci"] == pytest.approx(list(ci["auc"]), abs=1e-4)  # the csv rounds probabilities
    assert metrics["test_ece"] == pytest.approx(expected_calibration_error(labels, probs, 15), abs=1e-4)


def test_evaluate_gives_the_runs_intervals(run, tmp_path):
    ckpt = run["metrics"]["ckpt_path"]
    metrics = evaluate(compose_evaluate(f"ckpt={ckpt}", *SYNTHETIC, f"out={tmp_path}", "report=false", *EVAL))
    trained = run["metrics"]
    assert metrics["bootstrap"] == trained["bootstrap"] and metrics["test_acc_ci"] == trained["test_acc_ci"]
    assert metrics["test_balanced_acc_ci"] == trained["test_balanced_acc_ci"]
    assert metrics["test_auc_ci"] == pytest.approx(trained["test_auc_ci"], abs=1e-5)
    assert metrics["test_ece"] == pytest.approx(trained["test_ece"], abs=1e-5)
    assert "temperature_scaling" not in metrics


def test_evaluate_calibrate_fits_a_temperature_on_val(run, tmp_path, capsys):
    ckpt = run["metrics"]["ckpt_path"]
    metrics = evaluate(compose_evaluate(f"ckpt={ckpt}", *SYNTHETIC, f"out={tmp_path}", "report=false", "calibrate=true"))
    scaled = metrics["temperature_scaling"]
    assert scaled["fitted_on"] == "val" and scaled["val_tiles"] == 36 and scaled["temperature"] > 0
    assert scaled["val_nll_after"] <= scaled["val_nll_before"] + 1e-9
    assert scaled["ece_before"] == pytest.approx(metrics["test_ece"], abs=1e-6)
    assert scaled["nll_before"] == pytest.approx(metrics["test_loss"], abs=1e-5)
    assert json.loads((tmp_path / "metrics.json").read_text())["temperature_scaling"] == scaled
    assert f"temperature {scaled['temperature']:.3f} (fitted on 36 val tiles)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["eval.bootstrap_resamples=100"],
            "eval.bootstrap_resamples=100 is not valid: it must be an integer >= 1000 and <= 100000",
        ),  # noqa: E501
        (["eval.ci_level=95"], "eval.ci_level=95 is not valid: it must be a number >= 0.5 and <= 0.999"),
        (["eval.ece_bins=0"], "eval.ece_bins=0 is not valid"),
        (["calibrate=true", "split=val"], "calibrate=true fits the temperature on the val split"),
        (["calibrate=yes"], "calibrate=yes is not true or false"),
    ],
)
def test_evaluate_refuses_bad_settings_before_any_work(run, tmp_path, overrides, message):
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        evaluate(compose_evaluate(f"ckpt={run['metrics']['ckpt_path']}", *SYNTHETIC, f"out={out}", *overrides))
    assert not out.exists()


def test_training_validates_the_eval_settings(tmp_path):
    with pytest.raises(UserError, match=r"eval\.bootstrap_seed=-1 is not valid"):
        validate(compose_cfg(tmp_path, ["eval.bootstrap_seed=-1"]))
    with pytest.raises(UserError, match=r"eval\.ci_level='high' is not valid"):
        validate(compose_cfg(tmp_path, ["eval.ci_level=high"]))


def test_evidence_results_of_one_class():
    """A split with one class present: no AUC, so no AUC interval; the rest is defined."""
    from sslpath.results.metrics import evidence_results

    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    result = evidence_results(logits, torch.zeros(3, dtype=torch.long), stats.Bootstrap(), 15)
    assert result["test_auc_ci"] is None and result["test_balanced_acc"] == pytest.approx(2 / 3)
    assert np.isfinite(result["test_ece"]) and len(result["test_acc_ci"]) == 2
