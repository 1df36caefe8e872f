"""sslpath.report on hand-made run dirs: every output, numbers that match the predictions, the figures, the CLI.

The runs are written here as sslpath.train leaves them (fake_run), so no test trains a model.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm, t
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sslpath.core.errors import UserError
from sslpath.models import registry
from sslpath.reporting.evidence_figures import frozen_features_figure
from sslpath.reporting.figures import confusion_figure, curves_figure, examples_figure, label_efficiency_figure
from sslpath.reporting.runs import load_run
from sslpath.reporting.style import kind_colour, short_class_names
from sslpath.reporting.tables import group_runs
from sslpath.reporting.write import MARKER, write_report, write_sweep_results

from factories import PATHMNIST, fake_run, run_command, run_main, table

ABBREVIATIONS = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def nonblank_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG" and len(np.unique(np.asarray(image.convert("L")))) > 10, f"{path.name} looks blank"
        return image.size


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two seeds of the baseline and one SSL run side by side, as in a sweep dir."""
    root = tmp_path_factory.mktemp("sweep")
    fake_run(root / "0_baseline", seed=0, right=60, wall_seconds=120.0)
    fake_run(root / "1_baseline", seed=1, right=72, wall_seconds=180.0)
    fake_run(root / "2_ssl", model="simclr", run_name="ssl", right=45, wall_seconds=30.0, val_knn_acc=0.8125)
    return root


@pytest.fixture(scope="module")
def report(runs) -> Path:
    return write_report([runs], runs / "report")


def test_report_writes_every_file(report):
    out = report.parent
    assert report == out / "results.md"
    pngs = ["val_accuracy.png", "val_loss.png"]
    pngs += [f"{kind}_{model}.png" for kind in ("qualitative", "confusion") for model in ("baseline", "ssl")]
    tables = ["results.csv", "results.md", "comparisons.csv", "comparisons.md"]  # comparisons: ssl vs baseline
    assert sorted(p.name for p in out.iterdir()) == sorted([*pngs, *tables, MARKER])
    for name in pngs:
        width, height = nonblank_png(out / name)
        assert 700 <= width <= 1400 and 500 <= height <= 1400, (name, width, height)  # 150 dpi
        assert f"]({name})" in report.read_text()
    assert not list(out.parent.glob(".report.*")), "staging dirs left behind"


def test_table_pools_seeds_in_consistent_units(runs, report):
    rows = table(report)
    assert [(r["Model"], r["Label fraction"], r["n"]) for r in rows] == [("baseline", "1", "2"), ("ssl", "1", "1")]
    baseline, ssl = rows
    accs = [60 / 90, 72 / 90]
    mean, std = 100 * np.mean(accs), 100 * np.std(accs, ddof=1)
    half = t.ppf(0.975, 1) * std / np.sqrt(2)  # two seeds: the Student-t interval of the mean, 1 degree of freedom
    assert baseline["Test accuracy (%)"] == f"{mean:.2f} ± {std:.2f} [{mean - half:.2f}, {mean + half:.2f}]"
    auc = json.loads((runs / "2_ssl" / "metrics.json").read_text())["test_auc"]
    assert ssl["Test accuracy (%)"] == "50.00" and ssl["Test AUC"] == f"{auc:.4f}"
    assert baseline["Val kNN accuracy (%)"] == "—" and ssl["Val kNN accuracy (%)"] == "81.25"
    assert baseline["Wall time (min)"] == f"2.5 ± {np.std([2, 3], ddof=1):.1f}" and ssl["Wall time (min)"] == "0.5"  # no interval
    assert baseline["Epochs"] == "3 ± 0"

    numbers = {row["model"]: row for row in read_csv(report.parent / "results.csv")}
    assert numbers["baseline"]["n"] == "2" and numbers["ssl"]["n"] == "1" and numbers["ssl"]["test_acc_std"] == ""
    assert numbers["ssl"]["kind"] == "simclr" and float(numbers["ssl"]["label_fraction"]) == 1.0
    assert float(numbers["baseline"]["test_acc_mean"]) == pytest.approx(np.mean(accs), abs=1e-12)
    assert float(numbers["baseline"]["test_acc_std"]) == pytest.approx(np.std(accs, ddof=1), abs=1e-12)
    low, high = float(numbers["baseline"]["test_acc_ci_low"]), float(numbers["baseline"]["test_acc_ci_high"])
    assert (low, high) == pytest.approx(((mean - half) / 100, (mean + half) / 100), abs=1e-12)
    assert numbers["baseline"]["test_acc_ci_method"] == "t" and "wall_seconds_ci_low" not in numbers["baseline"]
    assert numbers["ssl"]["test_acc_ci_low"] == numbers["ssl"]["test_acc_ci_method"] == ""  # a run stored without one
    assert numbers["baseline"]["val_knn_acc_mean"] == "" and float(numbers["ssl"]["val_knn_acc_mean"]) == 0.8125
    assert float(numbers["baseline"]["wall_seconds_mean"]) == 150.0  # the CSV keeps seconds, unrounded


def test_rows_per_model_and_label_fraction(tmp_path):
    job = 0
    for model in ("baseline", "finetune"):
        for fraction, right in ((0.01, 20), (0.1, 40), (1.0, 70)):
            for seed in (0, 1):
                fake_run(tmp_path / "sweep" / f"{job}_{model}", model=model, seed=seed, fraction=fraction, right=right + seed)
                job += 1
    results = write_report([tmp_path / "sweep"], tmp_path / "out", figures=False)

    expected = [(m, f) for m in ("baseline", "finetune") for f in ("0.01", "0.1", "1")]
    assert [(r["Model"], r["Label fraction"]) for r in table(results)] == expected
    assert all(r["n"] == "2" for r in table(results))
    cells = read_csv(tmp_path / "out" / "results.csv")
    assert [(r["model"], float(r["label_fraction"])) for r in cells] == [
        (m, f) for m in ("baseline", "finetune") for f in (0.01, 0.1, 1.0)
    ]
    assert float(cells[1]["test_acc_mean"]) == pytest.approx(np.mean([40 / 90, 41 / 90]), abs=1e-12)

    # With figures: one section and confusion matrix per model and fraction, and the label-efficiency figure.
    results = write_report([tmp_path / "sweep" / f"{job}_finetune" for job in (6, 8)], tmp_path / "drawn", tensorboard=False)
    for pct in ("1pct", "10pct"):
        assert (tmp_path / "drawn" / f"confusion_finetune_{pct}.png").is_file()
    text = results.read_text()
    assert "## finetune, 10% labels\n" in text and "![label_efficiency](label_efficiency.png)" in text
    nonblank_png(tmp_path / "drawn" / "label_efficiency.png")


def test_confusion_matrix_shows_counts_rates_and_accuracy(runs):
    baseline = [load_run(runs / "0_baseline"), load_run(runs / "1_baseline")]
    (group,) = group_runs(baseline)
    ax = confusion_figure(group.runs, group.title).axes[0]
    counts = np.zeros((9, 9), dtype=int)
    for run in group.runs:
        np.add.at(counts, (run.labels, run.preds), 1)
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert texts[0, 0] == f"{counts[0, 0]}\n{counts[0, 0] / counts[0].sum():.0%}"
    assert texts[0, 1] == f"{counts[0, 1]}\n{counts[0, 1] / counts[0].sum():.0%}"
    assert [t.get_text() for t in ax.get_xticklabels()] == ABBREVIATIONS
    assert [t.get_text() for t in ax.get_yticklabels()][0] == f"ADI ({counts[0].sum()})"
    title = ax.get_title()
    assert title.startswith("baseline · 100% labels · seeds 0, 1 (pooled)")
    assert f"accuracy {np.trace(counts) / counts.sum():.2%}" in title and "180 predictions of 2 runs" in title
    assert str(runs) not in title and "0_baseline" not in title
    legend = ax.figure.get_supxlabel().replace("\u00a0", " ").replace("\n", " ")
    assert "ADI = adipose" in legend and "TUM = colorectal adenocarcinoma epithelium" in legend


def test_example_grid_uses_short_names_and_a_legend(runs):
    run = load_run(runs / "2_ssl")
    fig = examples_figure(run)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 9 and titles[0] == "ADI (82%) / ADI"
    assert fig._suptitle.get_text().startswith("ssl · 100% labels · seed 0\n")
    assert "BACK = background" in fig.get_supxlabel().replace("\u00a0", " ")


def test_short_class_names():
    assert short_class_names(PATHMNIST) == ABBREVIATIONS
    assert short_class_names(["cat", "dog"]) == ["cat", "dog"]
    assert short_class_names(["benign tissue sample", "malignant tissue sample"]) == ["benign", "malignant"]
    assert short_class_names(["tissue type one", "tissue type two"]) == ["0", "1"]


def test_fixed_colour_per_model_kind(runs, tmp_path):
    """Each kind's colour is the one its model class declares (sslpath.models.registry): all different."""
    assert kind_colour("SimCLR") == kind_colour("simclr") == registry.colour("simclr")
    assert len({kind_colour(k) for k in registry.kinds()}) == len(registry.kinds()) >= 8
    assert kind_colour("mystery") == kind_colour("mystery")  # unknown kinds: stable

    fake_run(tmp_path / "a", model="finetune", fraction=0.1, right=30)
    fake_run(tmp_path / "b", model="finetune", fraction=1.0, right=60)
    fake_run(tmp_path / "c", model="baseline", fraction=1.0, right=50)
    groups = group_runs([load_run(tmp_path / d) for d in "abc"])
    lines = curves_figure(groups, "val/acc", "acc", 100.0).axes[0].lines
    assert [line.get_color() for line in lines] == [registry.colour("finetune")] * 2 + [registry.colour("baseline")]
    assert lines[0].get_linestyle() != lines[1].get_linestyle()  # one kind, two fractions: told apart by dashes
    (line, *_), *_ = label_efficiency_figure(groups).axes[0].containers
    assert line.get_color() == registry.colour("finetune")


def test_ssl_accuracy_curve_is_labelled_online_linear_probe(runs):
    groups = group_runs([load_run(runs / d) for d in ("0_baseline", "1_baseline", "2_ssl")])
    ax = curves_figure(groups, "val/acc", "validation accuracy (%)", 100.0).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline (n=2)", "ssl — online linear probe"]
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[1, 30.5], [2, 40.5], [3, 50.5]], atol=1e-4)
    ax = curves_figure(groups, "val/loss", "validation loss", 1.0).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline (n=2)", "ssl"]


@pytest.mark.parametrize("per_class", [True, False])
def test_label_efficiency_axis_and_chance_line(tmp_path, per_class):
    for i, (fraction, right) in enumerate(((0.01, 20), (0.1, 40), (1.0, 70))):
        extra = {"train_labels_per_class": 1000 * fraction} if per_class else {}
        fake_run(tmp_path / f"{i}", fraction=fraction, right=right, **extra)
    ax = label_efficiency_figure(group_runs([load_run(tmp_path / f"{i}") for i in range(3)])).axes[0]
    ((line, _, _),) = ax.containers
    xs = [10, 100, 1000] if per_class else [0.01, 0.1, 1.0]
    np.testing.assert_allclose(line.get_xydata(), np.c_[xs, [100 * 20 / 90, 100 * 40 / 90, 100 * 70 / 90]])
    assert ax.get_xlabel() == ("labels per class (log scale)" if per_class else "label fraction (log scale)")
    assert [t.get_text() for t in ax.get_xticklabels()] == (["10", "100", "1000"] if per_class else ["1%", "10%", "100%"])
    chance = [ln for ln in ax.lines if ln.get_label() == "chance (1/9)"]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(100 / 9)
    assert "chance (1/9)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_one_fraction_per_model_has_no_label_efficiency_figure(runs):
    assert label_efficiency_figure(group_runs([load_run(runs / "0_baseline")])) is None


def test_formats_and_dpi(tmp_path):
    run = fake_run(tmp_path / "ssl", model="simclr", run_name="ssl", classes=["a", "b", "c"], n=12, right=8)
    write_report([run], tmp_path / "hi", formats="png,svg", dpi=300, tensorboard=False)
    for stem in ("val_accuracy", "confusion_ssl"):
        assert b"<svg" in (tmp_path / "hi" / f"{stem}.svg").read_bytes()[:2000]
    write_report([run], tmp_path / "lo", dpi=150, tensorboard=False)
    hi, lo = nonblank_png(tmp_path / "hi" / "confusion_ssl.png"), nonblank_png(tmp_path / "lo" / "confusion_ssl.png")
    assert hi[0] == pytest.approx(2 * lo[0], abs=2) and hi[1] == pytest.approx(2 * lo[1], abs=2)
    assert not list((tmp_path / "lo").glob("*.pdf"))

    results = write_report([run], tmp_path / "pdf", formats=["pdf"], tensorboard=False)
    assert "[confusion_ssl (PDF)](confusion_ssl.pdf)" in results.read_text() and not list((tmp_path / "pdf").glob("*.png"))
    for stem in ("val_accuracy", "confusion_ssl"):
        assert (tmp_path / "pdf" / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    for bad in ({"formats": "png,jpg"}, {"formats": ""}, {"dpi": 0}):
        with pytest.raises(UserError, match="png, pdf, svg|dpi"):
            write_report([run], tmp_path / "bad", **{"formats": "png", **bad})
    assert not (tmp_path / "bad").exists()


def test_tensorboard_images_are_replaced_not_duplicated(runs, report, tmp_path):
    run = runs / "2_ssl"
    before = sorted((run / "tb").glob("events.*"))
    write_report([run], tmp_path / "again")
    write_report([run], tmp_path / "again")
    (event_file,) = (run / "tb" / "report").iterdir()  # one event file: the last report's, and nothing else
    assert event_file.name.startswith("events.")
    events = EventAccumulator(str(run / "tb" / "report"), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"report/qualitative", "report/confusion"}
    assert all(len(events.Images(tag)) == 1 for tag in events.Tags()["images"])
    assert sorted((run / "tb").glob("events.*")) == before  # the training curves are left alone
    assert load_run(run).curves["val/acc"] == pytest.approx({1: 0.3, 2: 0.4, 3: 0.5})
    assert [p.name for p in (run / "tb").iterdir() if p.is_dir()] == ["report"]


def test_existing_report_dir_is_replaced_whole(runs, tmp_path):
    out = tmp_path / "report"
    write_report([runs / "2_ssl"], out, figures=False)
    (out / "confusion_old_model.png").write_bytes(b"stale")
    write_report([runs / "2_ssl"], out, figures=False)
    assert not (out / "confusion_old_model.png").exists() and (out / "results.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_runs_with_different_classes_or_models_are_not_pooled(tmp_path):
    fake_run(tmp_path / "a", run_name="x")
    fake_run(tmp_path / "b", run_name="x", classes=["c0", "c1", "c2"])
    with pytest.raises(UserError, match="runs named 'x' with 100% labels have different classes"):
        group_runs([load_run(tmp_path / "a"), load_run(tmp_path / "b")])
    fake_run(tmp_path / "c", run_name="x", model="simclr")
    with pytest.raises(UserError, match="different model kinds"):
        group_runs([load_run(tmp_path / "a"), load_run(tmp_path / "c")])


def wilson(right: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval written out (Wilson 1927), independent of the code under test."""
    z, p = norm.ppf((1 + level) / 2), right / n
    centre, half = p + z**2 / (2 * n), z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return (centre - half) / (1 + z**2 / n), (centre + half) / (1 + z**2 / n)


def test_single_runs_show_their_intervals_and_frozen_features(tmp_path):
    """One SSL run with stored bootstrap intervals and frozen-feature accuracies, one baseline: each estimate
    carries its interval in the markdown and the CSV, the frozen columns stand beside the online probe's,
    and the SSL figure and reliability diagrams are drawn."""
    stored = {"test_acc_ci": [0.4, 0.6], "test_auc_ci": [0.7, 0.8]}
    stored |= {"test_balanced_acc": 0.5, "test_balanced_acc_ci": [0.41, 0.59]}
    frozen = {"frozen_knn_acc": 63 / 90, "frozen_linear_acc": 0.7, "ece_bins": 15}
    fake_run(tmp_path / "0_simclr", model="simclr", right=45, **stored, **frozen)
    fake_run(tmp_path / "1_baseline", right=60, test_acc_ci=[0.6, 0.73])
    results = write_report([tmp_path], tmp_path / "report", tensorboard=False)

    simclr, baseline = table(results)
    assert simclr["Test accuracy (%)"] == "50.00 [40.00, 60.00]" and simclr["Test AUC"].endswith(" [0.7000, 0.8000]")
    assert simclr["Balanced accuracy (%)"] == "50.00 [41.00, 59.00]" and baseline["Balanced accuracy (%)"] == "—"
    low, high = wilson(63, 90)  # 70 % of the 90 test tiles
    assert simclr["Frozen kNN accuracy (%)"] == f"70.00 [{100 * low:.2f}, {100 * high:.2f}]"
    assert simclr["Frozen linear-probe accuracy (%)"] == f"70.00 [{100 * low:.2f}, {100 * high:.2f}]"
    assert baseline["Frozen kNN accuracy (%)"] == "—" and baseline["Test accuracy (%)"] == "66.67 [60.00, 73.00]"
    text = results.read_text()
    assert "online linear probe" in text and "frozen kNN" in text and "Wilson score interval" in text

    rows = {row["model"]: row for row in read_csv(tmp_path / "report" / "results.csv")}
    assert (rows["simclr"]["test_acc_ci_low"], rows["simclr"]["test_acc_ci_high"]) == ("0.4", "0.6")
    assert rows["simclr"]["test_acc_ci_method"] == "bootstrap" and rows["simclr"]["frozen_knn_acc_ci_method"] == "wilson"
    assert float(rows["simclr"]["frozen_knn_acc_ci_low"]) == pytest.approx(wilson(63, 90)[0], abs=1e-9)
    assert rows["baseline"]["frozen_knn_acc_mean"] == rows["baseline"]["frozen_knn_acc_ci_low"] == ""

    out = tmp_path / "report"
    assert "](frozen_features.png)" in text and "](reliability_simclr.png)" in text
    nonblank_png(out / "frozen_features.png")
    nonblank_png(out / "reliability_simclr.png")
    assert not (out / "reliability_baseline.png").exists()  # its metrics.json holds no ece_bins


def test_frozen_features_figure_draws_each_interval(tmp_path):
    fake_run(tmp_path / "a", model="byol", right=45, test_acc_ci=[0.4, 0.6], frozen_knn_acc=0.7, frozen_linear_acc=0.6)
    ax = frozen_features_figure(group_runs([load_run(tmp_path / "a")])).axes[0]
    bars = [c for c in ax.containers if hasattr(c, "patches")]
    np.testing.assert_allclose([bar.get_height() for c in bars for bar in c], [50, 70, 60])
    ends = [c.errorbar.lines[2][0].get_segments()[0][:, 1] for c in bars]
    np.testing.assert_allclose(ends[0], [40, 60])  # the online probe's stored bootstrap interval
    np.testing.assert_allclose(ends[1], 100 * np.array(wilson(63, 90)))  # frozen kNN: 70 % of 90 tiles


def test_interval_missing_its_estimate_draws_no_bar_on_that_side(tmp_path):
    """A stored bootstrap interval whose bound lies past the estimate (a float32 test_acc beside float64 bounds,
    a percentile interval that misses its point) is drawn up to the estimate, not refused by matplotlib."""
    fake_run(tmp_path / "a", model="byol", right=45, test_acc_ci=[0.4, 0.49], frozen_knn_acc=0.7)
    ax = frozen_features_figure(group_runs([load_run(tmp_path / "a")])).axes[0]
    online = next(c for c in ax.containers if hasattr(c, "patches"))
    np.testing.assert_allclose(online.errorbar.lines[2][0].get_segments()[0][:, 1], [40, 50])


def test_n_counts_distinct_seeds(tmp_path, capsys):
    """A run named twice (again, through a symlink or a parent dir) is one run; a copy of a run, or another run with
    the same seed under the same name, is refused: n is the number of distinct seeds, never a repeated one."""
    run = fake_run(tmp_path / "runs" / "a", seed=3)
    (tmp_path / "link").symlink_to(run)
    results = write_report([run, run, tmp_path / "link", tmp_path / "runs"], tmp_path / "r1", figures=False)
    assert [(r["n"], r["Test accuracy (%)"]) for r in table(results)] == [("1", "66.67")]

    shutil.copytree(run, tmp_path / "copy")
    with pytest.raises(UserError, match=r"are both seed 3 of 'baseline' with 100% labels: the same seed twice is not two"):
        write_report([run, tmp_path / "copy"], tmp_path / "r2", figures=False)
    fake_run(tmp_path / "runs" / "rerun", seed=3, right=70)  # same seed, other result: not a replicate either
    with pytest.raises(UserError, match="are both seed 3"):
        group_runs([load_run(run), load_run(tmp_path / "runs" / "rerun")])
    assert not (tmp_path / "r2").exists()

    fake_run(tmp_path / "runs" / "seed4", seed=4, right=72)
    groups = group_runs([load_run(run), load_run(tmp_path / "runs" / "seed4")])
    assert [len(g.runs) for g in groups] == [2]
    with pytest.raises(SystemExit) as exit_:
        run_main("sslpath.report", str(run), str(tmp_path / "copy"), "--out", str(tmp_path / "r3"), "--no-figures")
    assert exit_.value.code == 2 and "are both seed 3" in capsys.readouterr().err


def test_report_says_how_each_checkpoint_was_chosen(tmp_path):
    """The sentence under the table follows the runs' `selection` (runs from before it: the best validation accuracy)."""
    fake_run(tmp_path / "runs" / "old")
    fake_run(tmp_path / "runs" / "last", run_name="probe-last", selection="last")
    only_old = write_report([tmp_path / "runs" / "old"], tmp_path / "r1", figures=False).read_text()
    assert "checkpoint chosen by the best validation accuracy on the whole validation split." in only_old
    both = write_report([tmp_path / "runs"], tmp_path / "r2", figures=False).read_text()
    assert "the best validation accuracy on the whole validation split / the last epoch, without validation labels" in both
    assert "(runs differ; each metrics.json names its `selection`)" in both


def test_other_dataset_gets_index_names_and_a_legend(tmp_path):
    classes = ["tissue type one", "tissue type two", "tissue type three"]
    fake_run(tmp_path / "run", classes=classes, right=7, n=12)
    ax = confusion_figure([load_run(tmp_path / "run")], "t").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    assert "0 = tissue type one" in ax.figure.get_supxlabel().replace("\u00a0", " ")


@pytest.mark.cli
def test_cli_regenerates_the_same_table(runs, report):
    expected = {name: (report.parent / name).read_text() for name in ("results.md", "results.csv")}
    names = ("0_baseline", "1_baseline", "2_ssl")
    # Run dirs named one by one: the default output is report/ under their common parent.
    result = run_command(
        *(str(runs / name) for name in names),
        "--formats",
        "png,pdf",
        "--dpi",
        "100",
        cwd=runs,
        module="sslpath.report",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(runs / "report" / "results.md") in result.stdout
    assert {name: (report.parent / name).read_text() for name in expected} == expected
    assert (runs / "report" / "confusion_ssl.pdf").is_file()


def test_dir_without_runs_is_expanded_or_refused(runs, tmp_path, capsys):
    chain = tmp_path / "chain"  # a chained fine-tune stopped after its SSL stage: only pretrain/ is done
    shutil.copytree(runs / "2_ssl", chain / "pretrain")
    results = write_report([chain], tmp_path / "out", figures=False)
    assert [r["Model"] for r in table(results)] == ["ssl"]

    empty = tmp_path / "unfinished"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="no metrics.json") as err:
        write_report([empty], tmp_path / "out2")
    assert str(empty) in str(err.value) and "ckpt_path=last" in str(err.value)
    with pytest.raises(SystemExit) as exit_info:
        run_main("sslpath.report", str(empty))
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("sslpath.report: error:") and str(empty) in stderr and "Traceback" not in stderr


def test_tables_only_report_draws_no_figure_anywhere(runs, report, tmp_path):
    """--no-figures / report_figures=false: the same tables, no image files, no TensorBoard images; a sweep's
    label-efficiency figure is left out too, and results.md says how to get the figures."""
    copied = tmp_path / "runs"
    shutil.copytree(runs, copied, ignore=shutil.ignore_patterns("report"))  # TensorBoard images stay out of it
    tables = write_report([copied], tmp_path / "tables", figures=False)
    for name in ("results.csv", "comparisons.csv"):
        assert read_csv(tables.parent / name) == read_csv(report.parent / name)
    written = [MARKER, "results.csv", "results.md", "comparisons.csv", "comparisons.md"]
    assert sorted(p.name for p in tables.parent.iterdir()) == sorted(written)
    assert "Figures were not drawn" in tables.read_text() and "![" not in tables.read_text()
    assert not list(copied.glob("*/tb/report"))
    for i, fraction in enumerate((0.1, 1.0)):
        fake_run(tmp_path / "fractions" / str(i), fraction=fraction)
    fractions = [load_run(tmp_path / "fractions" / str(i)) for i in range(2)]
    write_sweep_results(fractions, tmp_path, tmp_path / "sweep", figures=False)
    assert "Label efficiency" not in (tmp_path / "sweep_results.md").read_text() and not (tmp_path / "sweep").exists()
    run_main("sslpath.report", str(copied), "--out", str(tmp_path / "cli"), "--no-figures")
    assert not list((tmp_path / "cli").glob("*.png")) and (tmp_path / "cli" / "results.csv").is_file()
