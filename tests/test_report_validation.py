"""sslpath.report refuses bad inputs and unwritable outputs in one paragraph, before writing anything."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sslpath.core.errors import UserError
from sslpath.reporting.write import write_report

from factories import edit_json, fake_run, run_main


def write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        path = run / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)

    return edit


def edit_csv(transform: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    """Rewrite test_predictions.csv line by line."""

    def edit(run: Path) -> None:
        path = run / "test_predictions.csv"
        path.write_text("\n".join(transform(path.read_text().splitlines())) + "\n")

    return edit


def replace_field(line: int, field: int, value: str) -> Callable[[list[str]], list[str]]:
    def transform(lines: list[str]) -> list[str]:
        cells = lines[line].split(",")
        cells[field] = value
        return [*lines[:line], ",".join(cells), *lines[line + 1 :]]

    return transform


def save_npz(**overrides: object) -> Callable[[Path], None]:
    """Rewrite test_examples.npz with some arrays replaced (None: left out)."""

    def edit(run: Path) -> None:
        with np.load(run / "test_examples.npz") as npz:
            arrays = {key: npz[key] for key in npz.files} | overrides
        np.savez(run / "test_examples.npz", **{k: v for k, v in arrays.items() if v is not None})

    return edit


def pickled_npz(run: Path) -> None:
    np.savez(run / "test_examples.npz", images=np.array([{"x": 1}], dtype=object), labels=np.zeros(1), probs=np.zeros((1, 9)))


def pickle_file(run: Path) -> None:
    (run / "test_examples.npz").write_bytes(pickle.dumps({"images": [1, 2, 3]}))


def npy_file(run: Path) -> None:
    with (run / "test_examples.npz").open("wb") as f:
        np.save(f, np.zeros((9, 8, 8, 3), np.uint8))


# (file, change, words the message must contain)
BAD_INPUTS = {
    "metrics not json": ("metrics.json", write("metrics.json", "{'test_acc': 0.5"), "cannot be read as JSON"),
    "metrics binary": ("metrics.json", write("metrics.json", b"\xff\xfe\x00junk"), "cannot be read as JSON"),
    "metrics empty list": ("metrics.json", write("metrics.json", "[]"), "holds an array, not an object"),
    "metrics number": ("metrics.json", write("metrics.json", "0.5"), "holds a number, not an object"),
    "metrics missing keys": ("metrics.json", edit_json(test_acc=..., seed=...), "`seed` is missing; `test_acc` is missing"),
    "seed is text": ("metrics.json", edit_json(seed="0"), "`seed` is '0', not an integer"),
    "seed is bool": ("metrics.json", edit_json(seed=True), "`seed` is True, not an integer"),
    "acc above 1": ("metrics.json", edit_json(test_acc=66.7), "`test_acc` is 66.7, not a number from 0 to 1"),
    "fraction 0": ("metrics.json", edit_json(label_fraction=0), "`label_fraction` is 0, not a number in (0, 1]"),
    "auc text": ("metrics.json", edit_json(test_auc="high"), "`test_auc` is 'high'"),
    "empty model": ("metrics.json", edit_json(model=""), "`model` is ''"),
    "absent not a list": ("metrics.json", edit_json(absent_classes="mucus"), "`absent_classes` is 'mucus', not a list"),
    "absent but present": ("metrics.json", edit_json(absent_classes=["mucus"]), "lists ['mucus'] in absent_classes"),
    "knn text": ("metrics.json", edit_json(val_knn_acc="0.8"), "`val_knn_acc` is '0.8'"),
    "selection unknown": ("metrics.json", edit_json(selection="best"), "`selection` is 'best', not one of best_val"),
    "unknown field": ("metrics.json", edit_json(accuracy=0.9), "has unknown field(s) 'accuracy'"),
    "other schema": ("metrics.json", edit_json(schema_version=2), "`schema_version` is 2, not 1"),
    "no absent list": ("metrics.json", edit_json(absent_classes=...), "`absent_classes` is missing"),
    "classes differ": ("metrics.json", edit_json(per_class_acc={"a": 0.5, "b": 0.5}), "per_class_acc for 2 classes"),
    "csv empty": ("test_predictions.csv", write("test_predictions.csv", ""), "is empty"),
    "csv header only": ("test_predictions.csv", edit_csv(lambda lines: lines[:1]), "has a header but no predictions"),
    "csv no header": ("test_predictions.csv", edit_csv(lambda lines: lines[1:]), "not the header index,label,pred"),
    "csv wrong columns": ("test_predictions.csv", edit_csv(replace_field(0, 1, "y")), "not the header index,label,pred"),
    "csv bad class column": ("test_predictions.csv", edit_csv(replace_field(0, 4, "background")), "p_<class name>"),
    "csv duplicate class": ("test_predictions.csv", edit_csv(replace_field(0, 4, "p_adipose")), "each named once"),
    "csv one class": (
        "test_predictions.csv",
        edit_csv(lambda lines: [",".join(line.split(",")[:4]) for line in lines]),
        "at least two",
    ),
    "csv short row": (
        "test_predictions.csv",
        edit_csv(lambda lines: [*lines[:5], lines[5][:-9], *lines[6:]]),
        "11 fields in data row 5, but 12 columns",
    ),
    "csv text label": ("test_predictions.csv", edit_csv(replace_field(3, 1, "ADI")), "not a number"),
    "csv text prob": ("test_predictions.csv", edit_csv(replace_field(3, 5, "high")), "not a number"),
    "csv label too big": (
        "test_predictions.csv",
        edit_csv(replace_field(7, 1, "9")),
        "outside 0..8 (the 9 classes) in data row 7",
    ),
    "csv negative pred": ("test_predictions.csv", edit_csv(replace_field(2, 2, "-1")), "outside 0..8"),
    # adversarial round three, #80-#82: rows the probabilities contradict
    "csv probabilities sum past 1": (
        "test_predictions.csv",
        edit_csv(replace_field(3, 4, "0.780000")),
        "probabilities that do not sum to 1 in data row 3",
    ),
    "csv pred not the argmax": (
        "test_predictions.csv",
        edit_csv(
            lambda lines: [
                lines[0],
                *(
                    ",".join([*line.split(",")[:2], str((int(line.split(",")[2]) + 1) % 9), *line.split(",")[3:]])
                    for line in lines[1:]
                ),
            ]
        ),
        "a pred that is not the most probable class in data row 1",
    ),
    "csv repeated index": (
        "test_predictions.csv",
        edit_csv(replace_field(4, 0, "0")),
        "an index that repeats an earlier row's in data row 4",
    ),
    "npz junk": (
        "test_examples.npz",
        write("test_examples.npz", b"not an archive at all"),
        "cannot be read as plain NumPy arrays",
    ),
    "npz empty": ("test_examples.npz", write("test_examples.npz", b""), "is not a readable .npz archive"),
    "npz truncated zip": (
        "test_examples.npz",
        write("test_examples.npz", b"PK\x03\x04" + b"\0" * 40),
        "is not a readable .npz archive",
    ),
    "npz object array": ("test_examples.npz", pickled_npz, "holds pickled Python objects"),
    "npz is a pickle": ("test_examples.npz", pickle_file, "holds pickled Python objects"),
    "npz is a npy": ("test_examples.npz", npy_file, "is a single .npy array"),
    "npz without probs": ("test_examples.npz", save_npz(probs=None), "lacks the arrays probs"),
    "npz float images": (
        "test_examples.npz",
        save_npz(images=np.zeros((9, 8, 8, 3))),
        "`images` is float64 of shape (9, 8, 8, 3)",
    ),
    "npz gray images": ("test_examples.npz", save_npz(images=np.zeros((9, 8, 8), np.uint8)), "not uint8 N×H×W×3"),
    "npz short labels": (
        "test_examples.npz",
        save_npz(labels=np.zeros(3, np.int64)),
        "`labels` is int64 of shape (3,), not 12 integers",
    ),
    "npz label range": ("test_examples.npz", save_npz(labels=np.full(12, 9)), "`labels` has values outside 0..8"),
    "npz class count": ("test_examples.npz", save_npz(probs=np.zeros((12, 3))), "not floats of shape (12, 9)"),
}


@pytest.fixture
def good(tmp_path) -> Path:
    """A valid run next to the one a test breaks: the report must still refuse both."""
    return fake_run(tmp_path / "runs" / "0_good", seed=1)


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, good, case, capsys):
    name, change, words = BAD_INPUTS[case]
    run = fake_run(tmp_path / "runs" / "1_bad")
    change(run)
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        write_report([tmp_path / "runs"], out)
    message = str(err.value)
    assert str(run / name) in message and words in message, message
    assert "allow_pickle" not in message and "\n" not in message
    assert "sslpath.train" in message  # the fix: re-run the test stage, or leave the run out
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert not (good / "tb" / "report").exists() and not (run / "tb" / "report").exists()

    with pytest.raises(SystemExit) as exit_info:
        run_main("sslpath.report", str(tmp_path / "runs"), "--out", str(out))
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr == f"sslpath.report: error: {message}\n" and not out.exists()


def test_edited_accuracy_is_refused(tmp_path):
    run = fake_run(tmp_path / "run", run_name="finetune-frozen", right=60, n=90)
    edit_json(test_acc=0.95)(run)
    with pytest.raises(UserError) as err:
        write_report([run], tmp_path / "out")
    message = str(err.value)
    assert message.startswith(f"run 'finetune-frozen' ({run}): metrics.json says test_acc = 0.950000")
    assert "60 of 90 predictions right (0.666667)" in message and not (tmp_path / "out").exists()
    edit_json(test_acc=60 / 90 + 5e-7)(run)  # float32 rounding of the real accuracy passes
    write_report([run], tmp_path / "out", figures=False)


def test_optional_fields_may_be_absent_but_a_record_without_its_schema_version_is_refused(tmp_path):
    run = fake_run(tmp_path / "run")
    edit_json(val_knn_acc=..., best_val_acc=..., ckpt_path=None)(run)  # an SSL stage, a fast_dev_run
    assert (write_report([run], tmp_path / "out", figures=False)).is_file()
    edit_json(schema_version=...)(run)  # as metrics.json was before it had a schema: not read as if it had one
    with pytest.raises(UserError, match="`schema_version` is missing"):
        write_report([run], tmp_path / "out2")


def test_existing_report_survives_a_refused_one(tmp_path):
    run = fake_run(tmp_path / "run")
    out = tmp_path / "out"
    write_report([run], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    tb_before = {p.name: p.read_bytes() for p in (run / "tb" / "report").iterdir()}
    edit_json(test_acc=0.1)(run)
    with pytest.raises(UserError):
        write_report([run], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert {p.name: p.read_bytes() for p in (run / "tb" / "report").iterdir()} == tb_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]


@pytest.mark.parametrize("where", ["under a file", "is a file"])
def test_unwritable_out_is_refused(tmp_path, where, capsys):
    run = fake_run(tmp_path / "run")
    (tmp_path / "file").write_text("not a dir")
    out = tmp_path / "file" / "report" if where == "under a file" else tmp_path / "file"
    with pytest.raises(UserError, match="writable --out") as err:
        write_report([run], out)
    assert str(out) in str(err.value)
    assert not (run / "tb" / "report").exists()
    with pytest.raises(SystemExit) as exit_info:
        run_main("sslpath.report", str(run), "--out", str(out))
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("sslpath.report: error: ") and "Traceback" not in stderr
    assert (tmp_path / "file").read_text() == "not a dir"


def test_unwritable_tensorboard_dir_leaves_no_report(tmp_path):
    run = fake_run(tmp_path / "runs" / "run")
    other = fake_run(tmp_path / "runs" / "other", seed=3)
    (run / "tb" / "report").write_text("in the way")  # a file where the images dir goes
    with pytest.raises(UserError, match="--no-tensorboard") as err:
        write_report([tmp_path / "runs"], tmp_path / "out")
    assert str(run / "tb" / "report") in str(err.value)
    assert not (tmp_path / "out").exists() and not (other / "tb" / "report").exists()
    assert [p.name for p in (run / "tb").iterdir() if p.is_dir()] == []  # no staging dir left
    assert write_report([tmp_path / "runs"], tmp_path / "out", figures=False).is_file()


def test_cli_rejects_unknown_format(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        run_main("sslpath.report", str(run), "--formats", "png,tiff", "--out", str(tmp_path / "out"))
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "choose one or more of png, pdf, svg" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()
