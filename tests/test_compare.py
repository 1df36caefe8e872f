"""Paired comparisons in the report: compare_runs, default and named pairs, comparisons.md/.csv (issue 18)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from sslpath.core.errors import UserError
from sslpath.reporting.runs import load_run
from sslpath.reporting.write import write_report
from sslpath.results.compare import Comparison, compare_runs, default_pairs, named_pairs
from sslpath.results.stats import Bootstrap

from factories import fake_run, run_main


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Baseline and SSL with two seeds each on the same 90 tiles; fake_run gets the first `right` tiles right."""
    root = tmp_path_factory.mktemp("runs")
    fake_run(root / "b0", seed=0, right=60)
    fake_run(root / "b1", seed=1, right=72)
    fake_run(root / "s0", model="ssl", seed=0, right=45)
    fake_run(root / "s1", model="ssl", seed=1, right=70)
    return root


def test_compare_runs_by_hand(runs):
    """SSL seed 0 is right on tiles 0-44, the baseline on 0-59: 15 discordant tiles, all the baseline's, so
    McNemar's p = 2 / 2^15, and the difference -15/90 is significant."""
    ssl, base = load_run(runs / "s0"), load_run(runs / "b0")
    c = compare_runs(ssl, base, Bootstrap())
    assert (c.n, c.acc_a, c.acc_b, c.only_a, c.only_b) == (90, 0.5, 60 / 90, 0, 15)
    assert c.difference == pytest.approx(-15 / 90) and c.p_value == pytest.approx(2 / 2**15)
    assert c.ci[0] < c.difference < c.ci[1] < 0
    assert c.verdict == "baseline (seed 0, 100% labels) is more accurate (significant at 5 %)"
    # Seed 1: 2 discordant tiles, p = 0.5, the interval reaches 0.
    c1 = compare_runs(load_run(runs / "s1"), load_run(runs / "b1"), Bootstrap())
    assert (c1.only_a, c1.only_b, c1.p_value) == (0, 2, 0.5) and c1.ci[1] >= 0
    assert c1.verdict == "not significant at 5 %: no difference shown on these tiles"


def test_verdict_needs_both_tests():
    base = dict(a="A", b="B", n=100, acc_a=0.8, acc_b=0.75, difference=0.05, only_a=10, only_b=5, level=0.95)
    assert Comparison(ci=(0.01, 0.09), p_value=0.01, **base).verdict == "A is more accurate (significant at 5 %)"
    assert Comparison(ci=(-0.01, 0.09), p_value=0.3, **base).verdict.startswith("not significant at 5 %")
    assert Comparison(ci=(0.01, 0.09), p_value=0.06, **base).verdict.startswith("inconclusive at 5 %")
    assert Comparison(ci=(-0.01, 0.09), p_value=0.12, **{**base, "level": 0.9}).verdict.startswith("not significant at 10 %")


def test_other_tiles_are_refused(runs, tmp_path):
    fake_run(tmp_path / "short", model="ssl", n=72, right=40)
    with pytest.raises(UserError, match=r"were not tested on the same tiles: their test_predictions.csv have 90 and 72 test"):
        compare_runs(load_run(runs / "b0"), load_run(tmp_path / "short"), Bootstrap())
    shifted = fake_run(tmp_path / "shifted", model="ssl", right=40)
    path = shifted / "test_predictions.csv"
    rows = path.read_text().splitlines()
    # Swap the first two tiles, the index column kept in order.
    rows[1], rows[2] = rows[2].replace("1,", "0,", 1), rows[1].replace("0,", "1,", 1)
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match="labels that first differ at row 0"):
        compare_runs(load_run(runs / "b0"), load_run(shifted), Bootstrap())
    # By default a pair on other tiles is left out, not an error.
    assert default_pairs([load_run(runs / "b0"), load_run(tmp_path / "short")]) == []


def test_pairs_match_label_fraction_and_seed(runs):
    loaded = [load_run(runs / d) for d in ("b0", "b1", "s0", "s1")]
    pairs = default_pairs(loaded)
    assert [(a.dir.name, b.dir.name) for a, b in pairs] == [("s0", "b0"), ("s1", "b1")]
    assert [(a.dir.name, b.dir.name) for a, b in named_pairs(loaded, "baseline, ssl")] == [("b0", "s0"), ("b1", "s1")]
    with pytest.raises(UserError, match="no run is named 'dino'; the runs here are named baseline, ssl"):
        named_pairs(loaded, "ssl,dino")
    with pytest.raises(UserError, match="is not two different run names A,B"):
        named_pairs(loaded, "ssl")


def test_report_writes_comparisons_and_over_seed_summary(runs, tmp_path):
    results = write_report([runs], tmp_path / "report", figures=False)
    text = (tmp_path / "report" / "comparisons.md").read_text()
    assert "| ssl (seed 0, 100% labels) | baseline (seed 0, 100% labels) | 90 | 50.0 | 66.7 | -16.7 |" in text
    assert "| ssl vs baseline, 100% labels | 2 | -9.4 |" in text  # mean of -16.7 and -2.2
    rows = list(csv.DictReader((tmp_path / "report" / "comparisons.csv").open()))
    settings = [(r["only_a"], r["only_b"], r["resamples"], r["level"]) for r in rows]
    assert settings == [("0", "15", "1000", "0.95"), ("0", "2", "1000", "0.95")]
    assert float(rows[0]["mcnemar_p"]) == pytest.approx(2 / 2**15)
    assert "not significant at 5 %" in results.read_text() and "[comparisons.md](comparisons.md)" in results.read_text()


def test_report_cli_compare_option(runs, tmp_path, capsys):
    out = tmp_path / "cli"
    run_main("sslpath.report", str(runs), "--out", str(out), "--no-figures", "--compare", "baseline,ssl", "--ci-level", "0.9")
    rows = list(csv.DictReader((out / "comparisons.csv").open()))
    assert [r["a"][:8] for r in rows] == ["baseline", "baseline"] and {r["level"] for r in rows} == {"0.9"}
    for argv, message in (
        (["--compare", "ssl,dino"], "no run is named 'dino'"),
        (["--ci-level", "1.5"], "--ci-level 1.5 is not valid: it must be from 0.5 to 0.999"),
        (["--bootstrap-resamples", "10"], "--bootstrap-resamples 10 is not valid: it must be from 1000 to 100000"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run_main("sslpath.report", str(runs), "--out", str(tmp_path / "bad"), "--no-figures", *argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_over_seeds_only_with_independent_pairs(runs, tmp_path):
    """Two baseline seeds against one SSL run reuse that run: its differences are not independent seeds."""
    fake_run(tmp_path / "runs" / "b0", seed=0, right=60)
    fake_run(tmp_path / "runs" / "b1", seed=1, right=72)
    fake_run(tmp_path / "runs" / "s0", model="ssl", seed=0, right=45)
    write_report([tmp_path / "runs"], tmp_path / "report", figures=False, compare=["baseline,ssl"])
    text = (tmp_path / "report" / "comparisons.md").read_text()
    assert text.count("\n| baseline (seed ") == 2 and "## Over seeds" not in text


def test_no_baseline_no_comparisons(tmp_path):
    fake_run(tmp_path / "runs" / "s0", model="ssl", right=45)
    write_report([tmp_path / "runs"], tmp_path / "report", figures=False)
    assert not (tmp_path / "report" / "comparisons.md").exists()
    assert np.isin(["results.md", "results.csv"], [p.name for p in (tmp_path / "report").iterdir()]).all()
