"""Issue 18 leftovers: intervals in the robustness tables (the benchmark's stored bootstrap intervals, and
Wilson intervals for records written before them) and the robustness benchmark of a public encoder."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
import torch

from sslpath.core.errors import UserError
from sslpath.data.corruptions import Suite
from sslpath.data.synthetic import synthetic_splits
from sslpath.evaluation.benchmark import benchmark
from sslpath.evaluation.protocols import run as run_evaluate
from sslpath.reporting.robustness import comparison_markdown, record_markdown, records_csv
from sslpath.results.intervals import wilson_interval
from sslpath.results.robustness import read_robustness_record, robustness_record
from sslpath.results.stats import Bootstrap, bootstrap_intervals, score_intervals

from factories import TINY_DATA, compose_evaluate, run_main

SUITE = Suite(
    params={"brightness_down": (0.9, 0.7, 0.5, 0.3, 0.1), "gaussian_noise": (0.05, 0.1, 0.2, 0.3, 0.4)}, severities=(1, 3)
)
BOOT = Bootstrap(resamples=1000, seed=3, level=0.9)
SYNTHETIC = [o for o in TINY_DATA if not o.startswith(("data.size", "data.batch_size"))]


@pytest.fixture(scope="module")
def run():
    """A brightness "model" on 40 synthetic tiles with mixed labels, so accuracies lie strictly inside 0..1."""
    images = synthetic_splits(16, 3, {"train": 40, "val": 1, "test": 1}, seed=0)["train"].images
    brightness = images.float().mean((1, 2, 3))
    threshold = float(brightness.median())
    labels = torch.tensor([i % 2 for i in range(len(images))])

    def predict(batch: torch.Tensor) -> torch.Tensor:
        dark = (batch.float().mean((1, 2, 3)) < threshold).float()
        return torch.stack([1 - dark, dark], dim=1) * 4

    result = benchmark(SUITE, images, labels, ["a", "b"], predict, predict(images), 16, torch.device("cpu"), BOOT)
    correct = {
        (name, s): (predict(SUITE.apply(name, images, s, SUITE.draws(name, images, 0))).argmax(1) == labels).double().numpy()
        for name in SUITE.names
        for s in SUITE.severities
    }
    return result, labels.numpy(), (predict(images).argmax(1) == labels).double().numpy(), correct


def test_benchmark_intervals_are_the_bootstrap_of_each_accuracy_and_mean(run):
    """The clean interval equals the run's own accuracy bootstrap; a mean over conditions is the bootstrap of
    each tile's mean correctness; every point estimate lies inside its interval."""
    result, labels, clean, correct = run
    summary, rows = result.summary(), result.rows()
    onehot = np.eye(2)[np.where(clean == 1, labels, 1 - labels)]  # probabilities with the same predictions
    assert summary["clean_acc_ci"] == list(bootstrap_intervals(labels, onehot, BOOT)["acc"])
    mean = np.mean(list(correct.values()), axis=0)
    assert summary["mean_corruption_acc_ci"] == list(score_intervals(labels, {"m": mean}, BOOT)["m"])
    noise = np.mean([correct[("gaussian_noise", s)] for s in SUITE.severities], axis=0)
    assert summary["corruption_acc_ci"]["gaussian_noise"] == list(score_intervals(labels, {"n": noise}, BOOT)["n"])
    assert summary["bootstrap"] == {"resamples": 1000, "seed": 3, "level": 0.9}
    assert len(summary["severity_acc_ci"]) == 2
    for row in rows:
        lo, hi = row["acc_ci"]
        assert lo <= row["acc"] <= hi
    assert any(hi - lo > 0 for lo, hi in (r["acc_ci"] for r in rows))
    lo, hi = summary["mean_corruption_acc_ci"]
    assert lo <= summary["mean_corruption_acc"] <= hi < 1


def _cells(text: str) -> list[tuple[float, float, float]]:
    """Every `value [lo, hi]` in text: accuracies, AUCs and (possibly negative) relative drops."""
    return [tuple(map(float, m)) for m in re.findall(r"(-?\d+\.\d+)%? \[(-?\d+\.\d+), (-?\d+\.\d+)\]", text)]


def test_tables_show_every_accuracy_with_its_interval(run, tmp_path):
    record = json.loads(json.dumps(robustness_record(run[0], "baseline", "baseline", "/x/best.ckpt")))
    (tmp_path / "robustness.json").write_text(json.dumps(record))
    assert read_robustness_record(tmp_path / "robustness.json") == record  # the stored intervals pass the checks
    one = record_markdown(record)
    lo, hi = record["summary"]["mean_corruption_acc_ci"]
    mca = 100 * record["summary"]["mean_corruption_acc"]
    assert f"(mCA, over 2 corruptions × 2 severities) {mca:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]" in one
    # the summary's 5 estimates (clean and mCA accuracy and AUC, the drop); accuracy and AUC tables of
    # 2 corruptions × (2 severities + mean) and the mean row
    assert len(_cells(one)) == 5 + 2 * (2 * 3 + 3)
    assert "90 % percentile-bootstrap interval over the 40 test tiles" in one
    many = comparison_markdown([record, record], ("png",))
    # summary: clean and mCA accuracy, drop, clean and mean AUC; per corruption: 2; per severity: clean + 2;
    # each for two models
    assert len(_cells(many)) == 2 * (5 + 2 + 3)
    rows = list(csv.DictReader(io.StringIO(records_csv([record]))))
    assert [float(rows[1]["acc_ci_lo"]), float(rows[1]["acc_ci_hi"])] == record["rows"][1]["acc_ci"]


def test_a_record_without_intervals_gets_wilson_for_single_accuracies(run):
    """A robustness.json written before intervals were stored: Wilson intervals, said so, none for means."""
    record = json.loads(json.dumps(robustness_record(run[0], "old", "baseline", "/x/best.ckpt")))
    for key in ("clean_acc_ci", "mean_corruption_acc_ci", "corruption_acc_ci", "severity_acc_ci", "bootstrap"):
        del record["summary"][key]
    for row in record["rows"]:
        del row["acc_ci"]
    text = comparison_markdown([record], ("png",))
    lo, hi = wilson_interval(record["summary"]["clean_acc"], 40, 0.95)
    assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in text
    assert "Wilson intervals for single accuracies and none for means" in text


def test_a_bad_stored_interval_is_refused(run, tmp_path):
    record = json.loads(json.dumps(robustness_record(run[0], "x", "baseline", "/x/best.ckpt")))
    record["summary"]["mean_corruption_acc_ci"] = [0.9, 0.1]
    (tmp_path / "robustness.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"summary.mean_corruption_acc_ci.*\[lo, hi\]"):
        read_robustness_record(tmp_path / "robustness.json")


# ----------------------------------------------------------------------------------------------
# The robustness benchmark of a public encoder (evaluate encoder=timm/<name> protocol=linear corruptions=…)


LINEAR = ["protocol=linear", "protocol.label_fractions=[1.0]", "protocol.seeds=2", "protocol.l2=[1e-2]", "protocol.max_iter=50"]
CORRUPT = ["corruptions=pathology", "corruptions.names=[brightness_down,gaussian_noise]", "corruptions.severities=[1,5]"]


@pytest.mark.slow
def test_a_public_encoder_is_benchmarked_under_corruptions_and_compared(timm_weights, tmp_path):
    """encoder=timm/… with safetensors weights: its full-label probe is tested on the same corrupted tiles as any
    model, the record reads back and robustness_report compares it."""
    source = ["encoder.name=timm/test_resnet", f"encoder.weights={timm_weights}", "encoder.image_size=32"]
    out = tmp_path / "enc"
    cfg = compose_evaluate(*source, *SYNTHETIC, *LINEAR, *CORRUPT, f"out={out}", "device=cpu", "features.cache_dir=null")
    results = run_evaluate(cfg)
    record = read_robustness_record(out / "robustness.json")
    assert record["model"] == "timm/test_resnet" and str(timm_weights) in record["ckpt_path"]
    assert results["robustness"] == record["summary"]
    assert record["summary"]["corruptions"] == ["brightness_down", "gaussian_noise"] and record["summary"]["severities"] == [1, 5]
    assert record["summary"]["num_images"] == 36 and record["summary"]["mean_corruption_acc_ci"] is not None
    # the clean row is the probe's accuracy on the clean test tiles: the linear protocol's all-labels point
    full = next(r for r in results["records"] if r["x"] == 1.0)  # the all-labels fit, the probe benchmarked
    assert record["summary"]["clean_acc"] == pytest.approx(full["acc"])
    run_main("sslpath.robustness_report", str(out), "--out", str(tmp_path / "cmp"))
    assert "timm/test_resnet" in (tmp_path / "cmp" / "robustness_comparison.md").read_text()


def test_corruptions_with_another_protocol_are_refused(timm_weights, tmp_path):
    source = ["encoder.name=timm/test_resnet", f"encoder.weights={timm_weights}", "encoder.image_size=32"]
    cfg = compose_evaluate(*source, *SYNTHETIC, "protocol=knn", *CORRUPT, f"out={tmp_path / 'o'}", "device=cpu")
    with pytest.raises(UserError, match=r"corruptions=pathology cannot be combined with protocol=knn.*protocol=linear tests"):
        run_evaluate(cfg)
    assert not (tmp_path / "o").exists()
