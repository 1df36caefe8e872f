"""Issue 18 leftovers: every estimate of a robustness report carries its interval. The AUCs and relative drops
get stratified percentile-bootstrap intervals from the accuracies' own resamples (a relative drop's paired:
the same resampled tiles clean and corrupted), robustness.json checks them, and every table shows them."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from matplotlib.container import ErrorbarContainer

from sslpath.core.errors import UserError
from sslpath.data.corruptions import Suite
from sslpath.data.synthetic import synthetic_splits
from sslpath.evaluation.benchmark import benchmark, robustness_intervals
from sslpath.reporting.robustness import comparison_figure, comparison_markdown, record_markdown, records_csv, robustness_figure
from sslpath.results.robustness import read_robustness_record, robustness_record
from sslpath.results.stats import Bootstrap, percentile_interval, resample_weights

BOOT = Bootstrap(resamples=1000, seed=5, level=0.95)


def _onehot(labels: np.ndarray, correct: np.ndarray, classes: int = 2) -> np.ndarray:
    """Probabilities whose argmax is the label where `correct`, the next class elsewhere."""
    preds = np.where(correct == 1, labels, (labels + 1) % classes)
    return np.eye(classes)[preds] * 0.8 + 0.1


def _nested(labels: np.ndarray, n_clean: int, n_corrupt: int, corrupt_errors_in_clean: bool) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of 40 tiles (20 per class), clean and corrupted, one error set inside the other."""
    order = np.argsort(np.arange(len(labels)) % 20)  # right/wrong spread evenly over both classes
    clean, corrupt = np.zeros(len(labels)), np.zeros(len(labels))
    clean[order[:n_clean]], corrupt[order[:n_corrupt]] = 1, 1
    assert corrupt_errors_in_clean == (n_corrupt > n_clean)
    return clean, corrupt


@pytest.mark.parametrize(
    ("n_clean", "n_corrupt"), [(30, 20), (20, 30)], ids=["clean-errors-in-corrupted", "corrupted-errors-in-clean"]
)
def test_relative_drop_interval_is_paired_and_narrower_than_combining_the_two_intervals(n_clean, n_corrupt):
    """40 tiles; the right tiles of one condition include all of the other's. Point estimate 1 − n_corrupt/n_clean;
    its interval is each resample's ratio on the same tiles (checked against resample_weights by hand), and it is
    narrower than both unpaired combinations: interval arithmetic on the two accuracy intervals, and the ratio of
    independently resampled accuracies."""
    labels = np.arange(40) % 2
    clean, corrupt = _nested(labels, n_clean, n_corrupt, n_corrupt > n_clean)
    correct = {"blur": {1: corrupt}}
    intervals = robustness_intervals(
        labels, clean, correct, _onehot(labels, clean), {"blur": {1: _onehot(labels, corrupt)}}, BOOT
    )

    weights = np.concatenate(list(resample_weights(labels, BOOT.resamples, BOOT.seed)), axis=1)
    by_hand = 1 - (corrupt @ weights) / (clean @ weights)
    assert intervals["drop:blur/1"] == percentile_interval(by_hand, BOOT.level)
    assert intervals["drop:mean"] == intervals["drop:blur/1"]  # one condition: the mean is that condition
    assert intervals["drop:clean/0"] == (0.0, 0.0)
    point = 1 - n_corrupt / n_clean
    lo, hi = intervals["drop:blur/1"]
    assert lo <= point <= hi and hi > lo

    (clean_lo, clean_hi), (cor_lo, cor_hi) = intervals["acc:clean/0"], intervals["acc:blur/1"]
    combined = (1 - cor_hi / clean_lo, 1 - cor_lo / clean_hi)
    other = np.concatenate(list(resample_weights(labels, BOOT.resamples, BOOT.seed + 1)), axis=1)
    independent = percentile_interval(1 - (corrupt @ other) / (clean @ weights), BOOT.level)
    for wide in (combined, independent):
        assert hi - lo < 0.8 * (wide[1] - wide[0])  # measured: 0.50 and 0.71 (30 → 20), 0.51 and 0.66 (20 → 30)


def test_a_drop_from_right_tiles_that_the_corruption_only_loses_is_never_negative():
    """Right on 30 of 40 clean tiles and on 20 of those when corrupted: drop 1 − 20/30 = 1/3 inside its interval,
    and no resample can show a negative drop, since every tile right when corrupted is right when clean."""
    labels = np.arange(40) % 2
    clean, corrupt = _nested(labels, 30, 20, False)
    intervals = robustness_intervals(
        labels, clean, {"x": {1: corrupt}}, _onehot(labels, clean), {"x": {1: _onehot(labels, corrupt)}}, BOOT
    )
    lo, hi = intervals["drop:mean"]
    assert 0 <= lo <= 1 / 3 <= hi < 1
    # binary two-level probabilities: the AUC is the balanced accuracy, here (errors spread evenly) the accuracy
    assert intervals["auc:clean/0"] == intervals["acc:clean/0"]


def test_auc_interval_covers_the_true_auc_of_scores_of_known_separability():
    """Positives score N(d, 1), negatives N(0, 1): the true AUC is Φ(d/√2). Over 40 independent test sets of 200
    tiles, the 95 % intervals cover it about 38 times (at least 33 unless the interval is wrong: P < 1e-3)."""
    d, truth = 1.0, 0.5 * (1 + math.erf(1.0 / 2))  # Φ(d/√2) = ½(1 + erf(d/2))
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 2
    boot = Bootstrap(resamples=1000, seed=1)
    covered, widths = 0, []
    for _ in range(40):
        score = rng.normal(size=200) + d * labels
        probs = np.stack([1 - 1 / (1 + np.exp(-score)), 1 / (1 + np.exp(-score))], axis=1)
        correct = (probs.argmax(1) == labels).astype(float)
        ci = robustness_intervals(labels, correct, {"x": {1: correct}}, probs, {"x": {1: probs}}, boot)
        assert ci["auc:x/1"] == ci["auc:clean/0"] == ci["auc:mean"]  # the same probabilities, the same resamples
        lo, hi = ci["auc:clean/0"]
        covered += lo <= truth <= hi
        widths.append(hi - lo)
    assert covered >= 33
    assert 0.05 < np.mean(widths) < 0.2  # ≈ 2 × 1.96 × √(AUC(1−AUC)/…) for 100 + 100 tiles


SUITE = Suite(
    params={"brightness_down": (0.9, 0.7, 0.5, 0.3, 0.1), "gaussian_noise": (0.05, 0.1, 0.2, 0.3, 0.4)}, severities=(1, 3)
)


@pytest.fixture(scope="module")
def record():
    """robustness.json of a brightness "model" on 40 synthetic tiles, as plain JSON."""
    images = synthetic_splits(16, 3, {"train": 40, "val": 1, "test": 1}, seed=0)["train"].images
    threshold = float(images.float().mean((1, 2, 3)).median())
    labels = torch.tensor([i % 2 for i in range(len(images))])

    def predict(batch: torch.Tensor) -> torch.Tensor:
        dark = (batch.float().mean((1, 2, 3)) < threshold).float()
        return torch.stack([1 - dark, dark + 0.01 * batch.float().mean((1, 2, 3))], dim=1) * 4

    result = benchmark(SUITE, images, labels, ["a", "b"], predict, predict(images), 16, torch.device("cpu"), BOOT)
    return json.loads(json.dumps(robustness_record(result, "base", "baseline", "/x/best.ckpt")))


def _write(tmp_path, record):
    path = tmp_path / "robustness.json"
    path.write_text(json.dumps(record))
    return path


def test_the_record_stores_an_interval_for_every_auc_and_drop(record, tmp_path):
    assert read_robustness_record(_write(tmp_path, record)) == record
    s = record["summary"]
    for key, value in (
        ("clean_auc", s["clean_auc"]),
        ("mean_corruption_auc", s["mean_corruption_auc"]),
        ("relative_drop", s["relative_drop"]),
    ):
        lo, hi = s[f"{key}_ci"]
        assert lo <= value <= hi, key
    assert list(s["corruption_auc_ci"]) == s["corruptions"] and len(s["severity_auc_ci"]) == 2
    assert all(row["auc_ci"] is not None and row["relative_drop_ci"] is not None for row in record["rows"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["rows"][1].__setitem__("auc_ci", [0.9, 0.2]), r"rows\[1\]\.auc_ci.*\[lo, hi\]"),
        (lambda r: r["summary"].__setitem__("clean_auc_ci", [0.2, 1.3]), r"summary\.clean_auc_ci.*from 0 to 1"),
        (lambda r: r["summary"]["corruption_auc_ci"].__setitem__("gaussian_noise", [0.1]), r"summary\.corruption_auc_ci"),
        (lambda r: r["summary"].__setitem__("relative_drop_ci", ["a", 1]), r"summary\.relative_drop_ci.*two numbers"),
        (lambda r: r["rows"][2].__setitem__("relative_drop_ci", [0.5, -0.5]), r"rows\[2\]\.relative_drop_ci"),
        (lambda r: (r["rows"][3].__setitem__("auc", None), r["rows"][3].__setitem__("auc_ci", [0.1, 0.2])), r"rows\[3\]\.auc_ci"),
    ],
    ids=[
        "row-auc-reversed",
        "clean-auc-over-1",
        "corruption-auc-short",
        "drop-not-a-number",
        "row-drop-reversed",
        "auc-ci-of-null",
    ],
)
def test_a_tampered_auc_or_drop_interval_is_refused(record, tmp_path, edit, message):
    tampered = json.loads(json.dumps(record))
    edit(tampered)
    with pytest.raises(UserError, match=message):
        read_robustness_record(_write(tmp_path, tampered))


def _shown(value: float, ci: list[float], scale: float, digits: int) -> str:
    return f"{value * scale:.{digits}f} [{ci[0] * scale:.{digits}f}, {ci[1] * scale:.{digits}f}]"


def test_tables_and_csv_show_the_auc_and_drop_intervals(record):
    s = record["summary"]
    drop = _shown(s["relative_drop"], s["relative_drop_ci"], 100, 1)
    clean_auc = _shown(s["clean_auc"], s["clean_auc_ci"], 1, 3)
    mean_auc = _shown(s["mean_corruption_auc"], s["mean_corruption_auc_ci"], 1, 3)
    row = next(line for line in comparison_markdown([record], ("png",)).splitlines() if line.startswith("| base |"))
    assert row.endswith(f"| {drop} | {clean_auc} | {mean_auc} |")
    one = record_markdown(record)
    assert f"relative drop from clean {drop.replace(' [', '% [', 1)}" in one
    cell = record["rows"][2]
    assert _shown(cell["auc"], cell["auc_ci"], 1, 3) in one.split("## AUC per corruption and severity")[1]
    rows = list(csv.DictReader(io.StringIO(records_csv([record]))))
    assert [float(rows[2]["auc_ci_lo"]), float(rows[2]["auc_ci_hi"])] == cell["auc_ci"]
    assert [float(rows[2]["relative_drop_ci_lo"]), float(rows[2]["relative_drop_ci_hi"])] == cell["relative_drop_ci"]


def test_a_record_written_before_auc_and_drop_intervals_is_shown_and_says_they_are_missing(record, tmp_path):
    old = json.loads(json.dumps(record))
    for key in ("clean_auc_ci", "mean_corruption_auc_ci", "corruption_auc_ci", "severity_auc_ci", "relative_drop_ci"):
        del old["summary"][key]
    for row in old["rows"]:
        del row["auc_ci"], row["relative_drop_ci"]
    assert read_robustness_record(_write(tmp_path, old)) == old
    s = old["summary"]
    text = comparison_markdown([old], ("png",))
    assert f"| {100 * s['relative_drop']:.1f} | {s['clean_auc']:.3f} | {s['mean_corruption_auc']:.3f} |" in text
    assert "shows those without an interval (missing, not zero)" in text
    rows = list(csv.DictReader(io.StringIO(records_csv([old]))))
    assert rows[1]["auc_ci_lo"] == rows[1]["relative_drop_ci_hi"] == "" and rows[1]["acc_ci_lo"] != ""


def test_the_figures_draw_the_mean_accuracy_with_error_bars_where_intervals_are_stored(record):
    """The mean-over-corruptions line carries the clean and per-severity intervals; a record without the mean
    intervals gets the line alone (no invented bars)."""

    def bars(fig) -> list[ErrorbarContainer]:
        return [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer) and c.has_yerr]

    (one,) = bars(robustness_figure(record))
    segments = one.lines[2][0].get_segments()
    lo, hi = record["summary"]["clean_acc_ci"]
    assert np.allclose(segments[0][:, 1], [100 * lo, 100 * hi])  # severity 0: the clean interval
    assert len(bars(comparison_figure([record, record]))) == 2
    old = json.loads(json.dumps(record))
    del old["summary"]["severity_acc_ci"]
    assert bars(robustness_figure(old)) == []


def test_error_bars_survive_a_value_just_outside_its_interval(record):
    """A stored accuracy is float32 and its interval float64 (and a percentile interval may end at the value): a
    mean a hair below its interval's lower end gets a zero-length bar there, not matplotlib's error."""
    edited = json.loads(json.dumps(record))
    clean = edited["rows"][0]["acc"]
    edited["rows"][0]["acc_ci"] = [clean + 1e-9, max(clean + 1e-9, edited["rows"][0]["acc_ci"][1])]
    (one,) = [c for c in robustness_figure(edited).axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert np.isclose(one.lines[2][0].get_segments()[0][0, 1], 100 * clean)
