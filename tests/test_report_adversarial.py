"""sslpath.report against hostile or careless input: output dirs that are not reports, checkpoints outside a
sweep, edited numbers, spreadsheet formulas, math-text names, huge declared arrays, corrupt TensorBoard logs."""

from __future__ import annotations

import csv
import io
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from sslpath.core.errors import UserError
from sslpath.reporting.figures import new_figure, save_figure
from sslpath.reporting.runs import load_run
from sslpath.reporting.write import MARKER, write_report
from sslpath.training.hydra_callbacks import SweepReport

from factories import edit_json, fake_run, run_command, run_main


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused_by_cli(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_main("sslpath.report", *argv, "--no-tensorboard")
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("sslpath.report: error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr
    return stderr


# ----------------------------------------------------------------------------------------------
# 1. --out never destroys what is not a report


def test_existing_user_dir_is_never_replaced(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    precious = tmp_path / "v"
    precious.mkdir()
    (precious / "notes.txt").write_text("precious")
    stderr = refused_by_cli(capsys, str(run), "--out", str(precious))
    assert "is not an sslpath report" in stderr and MARKER in stderr
    assert (precious / "notes.txt").read_text() == "precious" and sorted(p.name for p in precious.iterdir()) == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging dir left


@pytest.mark.parametrize("where", ["run itself", "parent of the runs", "dot in the run", "root"])
def test_out_holding_the_runs_is_refused(tmp_path, where, capsys, monkeypatch):
    runs = tmp_path / "sweep"
    first, second = fake_run(runs / "0_a"), fake_run(runs / "1_b", seed=1)
    before = snapshot(tmp_path)
    out = {"run itself": str(first), "parent of the runs": str(runs), "dot in the run": ".", "root": "/"}[where]
    monkeypatch.chdir(first)
    stderr = refused_by_cli(capsys, str(first), str(second), "--out", out)
    assert ("filesystem root" if where == "root" else "would delete the run's files") in stderr
    assert snapshot(tmp_path) == before


def test_relative_out_resolves_against_the_current_dir(tmp_path, monkeypatch, capsys):
    run = fake_run(tmp_path / "run")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for _ in range(2):  # the second time, replaced: it is a report now
        run_main("sslpath.report", str(run), "--out", "sub/../report", "--no-figures")
        assert (tmp_path / "here" / "report" / "results.md").is_file() and (tmp_path / "here" / "report" / MARKER).is_file()
    for out in (".", "report/.."):  # replacing the current dir would leave the shell in a deleted one
        assert "is or holds the current dir" in refused_by_cli(capsys, str(run), "--out", out)
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["report"]


def test_reports_are_replaced_on_rerun_but_not_a_dir_without_the_marker(tmp_path):
    run = fake_run(tmp_path / "run")
    write_report([run], run / "report", figures=False)
    (run / "report" / "confusion_gone.png").write_bytes(b"stale")
    write_report([run], run / "report", figures=False)  # the automatic <run>/report, again: replaced whole
    assert not (run / "report" / "confusion_gone.png").exists() and (run / "report" / MARKER).is_file()
    (run / "report" / MARKER).unlink()  # report files without the marker: no longer known to be a report
    with pytest.raises(UserError, match="is not an sslpath report"):
        write_report([run], run / "report", figures=False)
    assert (run / "report" / "results.md").is_file()


def test_tensorboard_report_dir_with_other_files_is_refused(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "tb" / "report").mkdir()
    (run / "tb" / "report" / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="holds other files"):
        write_report([run], tmp_path / "out")
    assert (run / "tb" / "report" / "mine.txt").read_text() == "keep" and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# 2. Only the runs named: a run dir is one run, a hand-given checkpoint pulls in no strangers


def test_run_dir_is_one_run_not_what_lies_below(tmp_path):
    run = fake_run(tmp_path / "run", run_name="outer")
    fake_run(run / "pretrain" / "simclr-abc", model="simclr", run_name="inner")
    results = write_report([run], tmp_path / "out")
    assert "outer" in results.read_text() and "inner" not in results.read_text()
    assert not (run / "pretrain" / "simclr-abc" / "tb" / "report").exists()


def sweep_with_ckpt(tmp_path: Path, ckpt: Path) -> Path:
    sweep = tmp_path / "sweep"
    fake_run(sweep / "0_finetune", model="finetune", pretrained_ckpt=str(ckpt))
    fake_run(sweep / "1_finetune", model="finetune", seed=1, pretrained_ckpt=str(ckpt))
    SweepReport().on_multirun_end(OmegaConf.create({"report": True, "hydra": {"sweep": {"dir": str(sweep)}}}))
    return sweep


def test_hand_given_checkpoint_pulls_no_unrelated_runs_into_a_sweep_report(tmp_path):
    elsewhere = tmp_path / "some" / "dir"
    stranger = fake_run(elsewhere / "projects" / "other", run_name="stranger")
    (elsewhere / "models").mkdir()
    (elsewhere / "models" / "ssl.ckpt").write_bytes(b"weights")
    before = snapshot(tmp_path / "some")
    sweep = sweep_with_ckpt(tmp_path, elsewhere / "models" / "ssl.ckpt")
    text = (sweep / "report" / "results.md").read_text()
    assert "stranger" not in text and str(stranger) not in text
    assert snapshot(tmp_path / "some") == before  # no TensorBoard images written into it


def test_ssl_stage_outside_the_sweep_is_reported_but_left_untouched(tmp_path):
    stage = fake_run(tmp_path / "stages" / "simclr-abc", model="simclr", run_name="ssl-pretrain-simclr")
    fake_run(stage / "nested", run_name="stranger")  # below the stage: not part of it
    (stage / "checkpoints").mkdir()
    (stage / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    before = snapshot(tmp_path / "stages")
    sweep = sweep_with_ckpt(tmp_path, stage / "checkpoints" / "last.ckpt")
    text = (sweep / "report" / "results.md").read_text()
    assert "ssl-pretrain-simclr" in text and "stranger" not in text
    assert snapshot(tmp_path / "stages") == before
    assert (sweep / "0_finetune" / "tb" / "report").is_dir()  # the sweep's own jobs get their images


# ----------------------------------------------------------------------------------------------
# 3 and 6. Numbers are checked, not trusted


def test_edited_auc_is_refused(tmp_path):
    run = fake_run(tmp_path / "run", run_name="edited")
    edit_json(test_auc=0.05)(run)
    with pytest.raises(UserError, match=r"run 'edited' .*test_auc = 0.050000, but the probabilities") as err:
        write_report([run], tmp_path / "out")
    assert str(run) in str(err.value) and not (tmp_path / "out").exists()
    edit_json(test_auc=None)(run)
    with pytest.raises(UserError, match="test_auc = null"):
        write_report([run], tmp_path / "out")


def test_auc_is_recomputed_from_distinct_probabilities(tmp_path):
    run = fake_run(tmp_path / "run", classes=["a", "b", "c"], n=30, right=20)
    rng = np.random.default_rng(0)
    lines = (run / "test_predictions.csv").read_text().splitlines()
    rows = [lines[0]]
    for line in lines[1:]:
        index, label, _, *_ = line.split(",")
        p = rng.dirichlet(np.ones(3))
        rows.append(f"{index},{label},{int(p.argmax())}," + ",".join(f"{v:.6f}" for v in p))
    (run / "test_predictions.csv").write_text("\n".join(rows) + "\n")
    table = np.array([r.split(",") for r in rows[1:]], dtype=float)
    labels, probs = table[:, 1].astype(int), table[:, 3:]
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415 (reference implementation)

    auc = float(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(3)]))
    edit_json(test_acc=float((table[:, 2] == labels).mean()), test_auc=auc)(run)
    assert load_run(run).record.test_auc == auc
    edit_json(test_auc=auc + 0.01)(run)
    with pytest.raises(UserError, match="test_auc"):
        load_run(run)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('"test_loss": NaN', "NaN is not a JSON number"),
        ('"test_loss": Infinity', "Infinity is not a JSON number"),
        ('"test_loss": -1e999', "too large to be finite at test_loss"),
        ('"extra": {"deep": [1, 1e999]}', "too large to be finite at extra.deep[1]"),
        ('"epochs": 1000000000000000000000000000000', "`epochs` is"),
        ('"epochs": 1e30', "`epochs` is 1e+30, not an integer"),
        ('"wall_seconds": 1e300', "`wall_seconds` is 1e+300"),
    ],
)
def test_non_finite_or_absurd_metrics_are_refused(tmp_path, text, words, capsys):
    run = fake_run(tmp_path / "run")
    metrics = (run / "metrics.json").read_text()
    key = text.split(":")[0]
    metrics = re.sub(key + r": [^,}]+", lambda _: text, metrics) if key in metrics else metrics.replace("{", "{" + text + ", ", 1)
    (run / "metrics.json").write_text(metrics)
    with pytest.raises(UserError) as err:
        write_report([run], tmp_path / "out")
    assert words in str(err.value) and str(run / "metrics.json") in str(err.value)
    refused_by_cli(capsys, str(run), "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_nan_epoch_in_tensorboard_is_skipped(tmp_path):
    run = fake_run(tmp_path / "run")
    writer = SummaryWriter(str(run / "tb"))
    for step, epoch in ((100, math.nan), (110, math.inf), (120, 1e30)):
        writer.add_scalar("epoch", epoch, step)
        writer.add_scalar("val/acc", 0.9, step)
    writer.close()
    assert load_run(run).curves["val/acc"] == pytest.approx({1: 0.3, 2: 0.4, 3: 0.5})
    assert write_report([run], tmp_path / "out", tensorboard=False).is_file()  # the curves drawn


def test_formulas_in_names_are_escaped_in_csv(tmp_path):
    sweep = tmp_path / "sweep"
    for i, name in enumerate(('=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", "\tx", "plain")):
        fake_run(sweep / f"{i}_job", run_name=name, model="@kind" if i == 0 else "baseline")
    config = {"report": True, "report_figures": False, "hydra": {"sweep": {"dir": str(sweep)}}}
    SweepReport().on_multirun_end(OmegaConf.create(config))
    for path in (sweep / "report" / "results.csv", sweep / "sweep_results.csv"):
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        # a control character is written as its escape (sslpath.core.names.text_name), so "\tx" is plain text
        assert [row["model"] for row in rows] == ['\'=HYPERLINK("http://x")', "'+1", "'-2", "'@SUM(A1)", "\\tx", "plain"]
        assert rows[0]["kind"] == "'@kind"


# ----------------------------------------------------------------------------------------------
# 4. Names are text, not math


def test_math_text_in_class_and_run_names_is_drawn_literally(tmp_path):
    run = fake_run(tmp_path / "run", run_name="$x$", classes=["$\\foo$", "b", "c"], n=30, right=20)
    results = write_report([run], tmp_path / "out")  # with TensorBoard images: drawn too
    assert (tmp_path / "out" / "confusion_x.png").is_file() and "$x$" in results.read_text()
    fig = new_figure((3, 2))
    fig.add_subplot().set_title("$\\foo$ robustness")  # as robustness_report's figures, which use save_figure
    save_figure(fig, tmp_path / "fig", ("png", "svg", "pdf"), 50)
    assert (tmp_path / "fig.svg").is_file()


# ----------------------------------------------------------------------------------------------
# 5. Declared array sizes are checked before anything is loaded


def huge_images_npz(path: Path, shape: tuple[int, ...]) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    buf = io.BytesIO()
    np.savez(buf, labels=np.zeros(12, np.int64), probs=np.full((12, 9), 1 / 9))
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr("images.npy", b"\x93NUMPY\x02\x00" + header.getvalue()[8:])
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("shape", [(10**6, 1000, 1000, 3), (12, 4096, 28, 3), (20_000, 8, 8, 3), (10**12,)])
def test_huge_declared_examples_are_refused_unloaded(tmp_path, shape):
    run = fake_run(tmp_path / "run")
    huge_images_npz(run / "test_examples.npz", shape)
    with pytest.raises(UserError, match=r"declares `images` of shape .*it was not loaded") as err:
        write_report([run], tmp_path / "out")
    assert str(run / "test_examples.npz") in str(err.value) and not (tmp_path / "out").exists()


def test_cli_refusals_have_no_traceback(tmp_path):
    run = fake_run(tmp_path / "run")
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "notes.txt").write_text("precious")
    result = run_command(str(run), "--out", "v", "--no-tensorboard", cwd=tmp_path, module="sslpath.report")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "not an sslpath report" in result.stderr
    assert (tmp_path / "v" / "notes.txt").read_text() == "precious"
