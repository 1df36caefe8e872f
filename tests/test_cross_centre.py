"""In-domain against out-of-domain (issue 19 item 4): one checkpoint's results on two data sources in one
report table, the drop's unpaired interval, the robustness benchmark's stain_shift severities beside them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from sslpath.reporting.cross_centre import NEWCOMBE, UNPAIRED, cross_centre_csv, cross_centre_rows
from sslpath.reporting.runs import load_run
from sslpath.reporting.tables import group_runs
from sslpath.reporting.write import write_report
from sslpath.results.intervals import difference_interval, wilson_interval
from sslpath.results.robustness import relative_drop
from sslpath.results.sources import OWN, data_source
from sslpath.results.stats import Bootstrap, unpaired_accuracy_difference

from factories import fake_run

OTHER = {"_target_": "sslpath.data.datamodule.FolderDataModule", "dir": "/data/other_centre/", "size": 28}


def evaluation(run_dir: Path, trained: Path, *, right: int, n: int, data: dict = OTHER, **metrics: object) -> Path:
    """An evaluation of `trained`'s checkpoint on other tiles, as sslpath.evaluate writes it."""
    fake_run(run_dir, right=right, n=n, data=data, evaluated_split="test", num_images=n, epochs=0, **metrics)
    record = json.loads((run_dir / "metrics.json").read_text())
    record["ckpt_path"] = str(trained / "checkpoints" / "best.ckpt")
    (run_dir / "metrics.json").write_text(json.dumps(record))
    return run_dir


def stain_benchmark(run_dir: Path, clean: float, accs: list[float], n: int) -> None:
    """robustness/robustness.json of a training run benchmarked under stain_shift only (as the sweep callback writes it)."""
    params = [0.025, 0.05, 0.07, 0.09, 0.11]
    rows = [{"corruption": "clean", "severity": 0, "param": None, "acc": clean, "auc": None, "loss": None, "relative_drop": 0.0}]
    rows += [
        {
            "corruption": "stain_shift",
            "severity": s,
            "param": p,
            "acc": a,
            "auc": None,
            "loss": None,
            "relative_drop": relative_drop(clean, a),
        }
        for s, (p, a) in enumerate(zip(params, accs), start=1)
    ]
    mean = sum(accs) / len(accs)
    summary = {
        "clean_acc": clean, "clean_auc": None, "mean_corruption_acc": mean, "mean_corruption_auc": None,
        "relative_drop": relative_drop(clean, mean), "corruptions": ["stain_shift"], "severities": [1, 2, 3, 4, 5],
        "seed": 0, "num_images": n,
    }  # fmt: skip
    record = {"run_name": "baseline", "model": "baseline", "summary": summary, "rows": rows, "params": {"stain_shift": params}}
    (run_dir / "robustness").mkdir()
    (run_dir / "robustness" / "robustness.json").write_text(json.dumps(record))


def test_unpaired_difference_has_both_sets_sampling_error():
    """Two test sets of 200 tiles (2 classes, the same accuracy in each): the interval's half-width is the
    normal approximation's 1.96·√(pa(1−pa)/na + pb(1−pb)/nb), far wider than either set's alone would give."""
    labels = np.repeat([0, 1], 100)
    correct_a = np.tile(np.arange(100) < 80, 2)  # 80 %
    correct_b = np.tile(np.arange(100) < 60, 2)  # 60 %
    diff, (lo, hi) = unpaired_accuracy_difference(labels, correct_a, labels, correct_b, Bootstrap(resamples=10_000))
    assert diff == pytest.approx(0.2)
    expected = 1.96 * np.sqrt(0.8 * 0.2 / 200 + 0.6 * 0.4 / 200)
    assert (hi - lo) / 2 == pytest.approx(expected, rel=0.08)
    assert lo < diff < hi
    # The same seed gives the same interval; another seed another one.
    again = unpaired_accuracy_difference(labels, correct_a, labels, correct_b, Bootstrap(resamples=10_000))
    other = unpaired_accuracy_difference(labels, correct_a, labels, correct_b, Bootstrap(resamples=10_000, seed=1))
    assert again == (diff, (lo, hi)) and other[1] != (lo, hi)


def test_newcombe_interval_matches_the_paper():
    """Newcombe 1998 (Stat. Med. 17: 873), Table II, method 10: 56/70 − 48/80 and 9/10 − 3/10."""
    assert difference_interval(56 / 70, 70, 48 / 80, 80, 0.95) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert difference_interval(9 / 10, 10, 3 / 10, 10, 0.95) == pytest.approx((0.1705, 0.8090), abs=5e-5)


def test_data_source_of_runs_and_evaluations():
    class Record:
        data, evaluated_split, tta = None, None, None

    own = data_source(Record())
    assert (own.label, own.own) == (OWN, True)
    Record.data, Record.evaluated_split = OTHER, "test"
    assert data_source(Record()).label == "other_centre, test split"
    Record.tta = True
    tta = data_source(Record())
    assert (
        tta.label == "other_centre, test split · d4 TTA"
        and tta.key != data_source(type("R", (), {"data": OTHER, "evaluated_split": "test"})()).key
    )


def test_rows_show_in_domain_out_of_domain_drop_and_stain_severities(tmp_path):
    """A training run (60 of 90 right) and its checkpoint evaluated on another centre (40 of 72 right): the
    drop 60/90 − 40/72 with its unpaired bootstrap interval; the run's stain_shift benchmark adds five lines
    with Wilson and Newcombe intervals."""
    trained = fake_run(tmp_path / "runs" / "train", right=60, n=90)
    stain_benchmark(trained, 60 / 90, [0.6, 0.5, 0.4, 0.3, 0.2], 90)
    other = evaluation(tmp_path / "runs" / "other", trained, right=40, n=72)
    runs = [load_run(trained), load_run(other)]
    rows = list(csv.DictReader(io.StringIO(cross_centre_csv(cross_centre_rows(group_runs(runs), Bootstrap())))))
    assert [r["tested_on"] for r in rows[:2]] == [OWN, "other_centre, test split"]
    assert rows[0]["drop"] == "" and float(rows[1]["acc"]) == pytest.approx(40 / 72)
    assert (float(rows[1]["acc_ci_low"]), float(rows[1]["acc_ci_high"])) == pytest.approx(wilson_interval(40 / 72, 72, 0.95))
    correct = [run.labels == run.preds for run in runs]
    expected = unpaired_accuracy_difference(runs[0].labels, correct[0], runs[1].labels, correct[1], Bootstrap())
    assert float(rows[1]["drop"]) == pytest.approx(60 / 90 - 40 / 72) == pytest.approx(expected[0])
    assert (float(rows[1]["drop_ci_low"]), float(rows[1]["drop_ci_high"])) == pytest.approx(expected[1])
    assert rows[1]["drop_ci_method"] == UNPAIRED
    stains = rows[2:]
    assert [r["tested_on"] for r in stains] == [f"stain_shift severity {s} ({p}), 90 tiles" for s, p in
                                                 zip(range(1, 6), (0.025, 0.05, 0.07, 0.09, 0.11))]  # fmt: skip
    assert float(stains[1]["drop"]) == pytest.approx(60 / 90 - 0.5)
    assert (float(stains[1]["drop_ci_low"]), float(stains[1]["drop_ci_high"])) == pytest.approx(
        difference_interval(60 / 90, 90, 0.5, 90, 0.95)
    )
    assert (float(stains[1]["acc_ci_low"]), float(stains[1]["acc_ci_high"])) == pytest.approx(wilson_interval(0.5, 90, 0.95))
    assert stains[1]["drop_ci_method"] == NEWCOMBE


@pytest.mark.slow
def test_report_writes_the_cross_centre_table(tmp_path):
    """python -m sslpath.report's writer: both sources as rows of results.md, the table in cross_centre.md/.csv
    and in results.md; runs on one source only write none."""
    trained = fake_run(tmp_path / "runs" / "train", right=60, n=90)
    other = evaluation(tmp_path / "runs" / "other", trained, right=40, n=72)
    text = write_report([trained, other], tmp_path / "report", tensorboard=False).read_text()
    assert "| baseline | 1 | 1 |" in text and "| baseline · other_centre, test split | 1 | 1 |" in text
    md = (tmp_path / "report" / "cross_centre.md").read_text()
    assert "| baseline | 1 | other_centre, test split | 1 | 55.6 [" in md and md.split("\n", 2)[2] in text
    assert (tmp_path / "report" / "cross_centre.csv").is_file()
    write_report([trained, fake_run(tmp_path / "runs" / "seed1", seed=1)], tmp_path / "report2", tensorboard=False)
    assert not (tmp_path / "report2" / "cross_centre.md").exists()


def test_over_seeds_the_drop_is_a_t_interval_and_the_first_given_is_in_domain(tmp_path):
    """Two checkpoints (seeds) each evaluated on its own data and another centre, no training run: the
    in-domain line is the source given first, the drop the t-interval of the per-seed drops."""
    own = {**OTHER, "dir": "/data/own_centre"}
    dirs = []
    for seed, (right_own, right_other) in enumerate([(60, 30), (70, 50)]):
        trained = tmp_path / f"ckpt{seed}"
        dirs.append(evaluation(tmp_path / f"own{seed}", trained, right=right_own, n=90, data=own, seed=seed))
        dirs.append(evaluation(tmp_path / f"other{seed}", trained, right=right_other, n=90, seed=seed))
    rows = cross_centre_rows(group_runs([load_run(d) for d in dirs]), Bootstrap())
    assert [r.tested_on for r in rows] == ["own_centre, test split", "other_centre, test split"]
    drop = rows[1].drop
    assert (drop.n, drop.method) == (2, "t") and drop.mean == pytest.approx(((60 - 30) + (70 - 50)) / 2 / 90)
    assert drop.ci[0] < drop.mean < drop.ci[1]
    # Given the other way round, the other centre is the reference.
    flipped = cross_centre_rows(group_runs([load_run(d) for d in dirs[1::2] + dirs[::2]]), Bootstrap())
    assert flipped[0].tested_on == "other_centre, test split" and flipped[1].drop.mean < 0


def test_runs_on_one_source_give_no_table(tmp_path):
    a, b = fake_run(tmp_path / "a", seed=0), fake_run(tmp_path / "b", seed=1)
    assert cross_centre_rows(group_runs([load_run(a), load_run(b)]), Bootstrap()) == []


def test_stain_robust_sweep_names_each_recipe():
    """experiment=stain_robust's run names hold the augmentation choice (a dotted choice key once gave None)."""
    GlobalHydra.instance().clear()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        cfg = compose(
            "train", overrides=["experiment=stain_robust", "data.stain_norm=macenko", "augment@augment.train=stain_robust"],
            return_hydra_config=True,
        )  # fmt: skip
    HydraConfig.instance().set_config(cfg)
    assert cfg.run_name == "baseline-macenko-stain_robust"
