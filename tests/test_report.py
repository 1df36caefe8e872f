"""sslpath.report on tiny finished runs: every output, numbers that match the predictions, the CLI."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_cfg, run_cli
from sslpath.errors import UserError
from sslpath.report import main, write_report
from sslpath.train import run

RUNS = {"baseline_s1": ["model=baseline", "seed=1"], "baseline_s2": ["model=baseline", "seed=2"], "ssl": ["model=ssl"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two seeds of the baseline and one SSL run side by side, as in a sweep dir."""
    root = tmp_path_factory.mktemp("sweep")
    for name, overrides in RUNS.items():
        run(compose_cfg(root / name, overrides))
    return root


@pytest.fixture(scope="module")
def report(runs) -> Path:
    return write_report([runs], runs / "report")


def table(results_md: Path) -> dict[str, dict[str, str]]:
    """results.md's markdown table as {model cell: {column: cell}}."""
    lines = [line for line in results_md.read_text().splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {row[0]: dict(zip(rows[0], row)) for row in rows[2:]}


def recount(run_dir: Path) -> float:
    with (run_dir / "test_predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return float(np.mean([row["label"] == row["pred"] for row in rows]))


def test_report_writes_every_file(report):
    out = report.parent
    assert report == out / "results.md"
    names = ["results.csv", "val_accuracy.png", "val_loss.png"]
    names += [f"{kind}_{model}.png" for kind in ("qualitative", "confusion") for model in ("baseline", "ssl")]
    for name in names:
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        with Image.open(png) as image:
            assert image.format == "PNG" and image.mode == "RGBA"
            assert 500 <= image.width <= 1200 and 350 <= image.height <= 1200, (png.name, image.size)
            assert len(set(image.convert("L").getdata())) > 10, f"{png.name} looks blank"


def test_accuracy_matches_recount_and_seeds_are_pooled(runs, report):
    rows = table(report)
    assert list(rows) == ["baseline (n=2)", "ssl"]
    assert rows["ssl"]["Test accuracy"] == f"{100 * recount(runs / 'ssl'):.2f}%"
    accs = [recount(runs / name) for name in ("baseline_s1", "baseline_s2")]
    assert rows["baseline (n=2)"]["Test accuracy"] == f"{100 * np.mean(accs):.2f} ± {100 * np.std(accs, ddof=1):.2f}%"
    assert all(" ± " in cell for cell in list(rows["baseline (n=2)"].values())[1:])
    assert rows["ssl"]["Epochs"] == "1" and rows["ssl"]["Wall time"].endswith(" s")

    with (report.parent / "results.csv").open(newline="") as f:
        numbers = {row["model"]: row for row in csv.DictReader(f)}
    assert numbers["baseline"]["n"] == "2" and numbers["ssl"]["n"] == "1" and numbers["ssl"]["test_acc_std"] == ""
    assert float(numbers["baseline"]["test_acc_mean"]) == pytest.approx(np.mean(accs), abs=1e-6)
    assert float(numbers["baseline"]["test_acc_std"]) == pytest.approx(np.std(accs, ddof=1), abs=1e-6)


def test_figures_are_logged_to_each_runs_tensorboard(runs, report):
    for name in RUNS:
        events = EventAccumulator(str(runs / name / "tb"))
        events.Reload()
        assert {"report/qualitative", "report/confusion"} <= set(events.Tags()["images"]), name


def test_cli_regenerates_the_same_table(runs, report):
    expected = {name: (report.parent / name).read_text() for name in ("results.md", "results.csv")}
    # Run dirs named one by one: the default output is report/ under their common parent.
    result = run_cli(*(str(runs / name) for name in RUNS), cwd=runs, module="sslpath.report", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(runs / "report" / "results.md") in result.stdout
    assert {name: (report.parent / name).read_text() for name in expected} == expected


def test_dir_without_runs_is_expanded_or_refused(runs, tmp_path, capsys):
    chain = tmp_path / "chain"  # a chained fine-tune stopped after its SSL stage: only pretrain/ is done
    shutil.copytree(runs / "ssl", chain / "pretrain")
    results = write_report([chain], tmp_path / "out")
    assert list(table(results)) == ["ssl"] and (tmp_path / "out" / "confusion_ssl.png").is_file()

    empty = tmp_path / "unfinished"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="no metrics.json") as err:
        write_report([empty], tmp_path / "out2")
    assert str(empty) in str(err.value) and "ckpt_path=last" in str(err.value)
    with pytest.raises(SystemExit) as exit_info:
        main([str(empty)])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("sslpath.report: error:") and str(empty) in stderr and "Traceback" not in stderr
