"""sslpath.predict on a tiny trained checkpoint: npz, image-folder and single-image inputs, hostile
file and class names, bad files and bad arguments."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslpath.core.errors import UserError
from sslpath.core.files import spreadsheet_safe
from sslpath.data.augment import BatchTransform
from sslpath.data.preprocess import to_tiles
from sslpath.evaluation.predict import predict
from sslpath.models.checkpoint import load_inference_model

from factories import compose_predict, read_csv, run_command


def expected_probs(ckpt: Path, tiles: torch.Tensor) -> np.ndarray:
    """What training's evaluation path gives for uint8 tiles: its transform, then the model."""
    model, meta = load_inference_model(ckpt)
    with torch.no_grad():
        return model(BatchTransform(mean=meta.mean, std=meta.std, channels_last=False)(tiles)).softmax(dim=1).numpy()


def probs_of(rows: list[dict[str, str]], columns: list[str]) -> np.ndarray:
    return np.array([[float(row[c]) for c in columns] for row in rows])


def test_npz_predictions_equal_the_runs_test_predictions(tiny_trained, tmp_path, capsys):
    out = tmp_path / "p.csv"
    predict(
        compose_predict(
            f"ckpt={tiny_trained['ckpt']}", f"input={tiny_trained['npz']}", f"out={out}", "batch_size=10", "device=cpu"
        )
    )
    rows, names = read_csv(out), [f"class {i}" for i in range(9)]
    assert list(rows[0]) == ["file", "predicted", *names]
    assert [row["file"] for row in rows] == [f"synthetic.npz:test[{i}]" for i in range(36)]
    run = tiny_trained["test_predictions"]
    assert [row["predicted"] for row in rows] == [names[int(row["pred"])] for row in run]
    assert np.abs(probs_of(rows, names) - probs_of(run, [f"p_{n}" for n in names])).max() <= 2e-6
    assert "36 images" in capsys.readouterr().out

    predict(compose_predict(f"ckpt={tiny_trained['ckpt']}", f"input={tiny_trained['npz']}", f"out={out}", "split=val"))
    assert read_csv(out)[-1]["file"] == "synthetic.npz:val[35]"


def test_image_folder_of_mixed_sizes_skips_corrupt_files_and_leaves_nothing_else(tiny_trained, tmp_path):
    """One CLI run: Hydra must leave no outputs/, .hydra/ or log file, only the predictions."""
    tiles = tiny_trained["splits"]["test"].images.permute(0, 2, 3, 1).numpy()
    folder = tmp_path / "tiles"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(tiles[0]).save(folder / "a_native.png")  # model size, lossless: as the npz
    large = np.array(Image.fromarray(tiles[1]).resize((40, 40), Image.Resampling.NEAREST))
    Image.fromarray(large).save(folder / "b_large.png")
    Image.fromarray(tiles[2]).resize((31, 23)).convert("RGBA").save(folder / "sub" / "c_wide.tiff")
    Image.fromarray(tiles[3]).convert("L").save(folder / "d_gray.bmp")
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "truncated.jpg").write_bytes((folder / "a_native.png").read_bytes()[:60])
    (folder / "notes.txt").write_text("not an image suffix: ignored")

    result = run_command(f"ckpt={tiny_trained['ckpt']}", "input=tiles", "device=cpu", cwd=tmp_path, module="sslpath.predict")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "tiles"]
    rows = read_csv(tmp_path / "predictions.csv")
    assert [row["file"] for row in rows] == ["a_native.png", "b_large.png", "d_gray.bmp", "sub/c_wide.tiff"]
    names = [f"class {i}" for i in range(9)]
    expected = expected_probs(tiny_trained["ckpt"], torch.cat([to_tiles(tiles[:1], 16), to_tiles(large[None], 16)]))
    assert np.abs(probs_of(rows[:2], names) - expected).max() <= 2e-6  # the training resize, not PIL's
    assert rows[0]["predicted"] == names[int(tiny_trained["test_predictions"][0]["pred"])]
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 2 and "broken.png" in skipped[0] and "truncated.jpg" in skipped[1]
    assert "4 images" in result.stdout and "2 skipped" in result.stdout and "Traceback" not in result.stderr


def test_nothing_readable_exits_2_and_writes_nothing(tiny_trained, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 garbage")
    result = run_command(f"ckpt={tiny_trained['ckpt']}", f"input={folder}", "out=p.csv", cwd=tmp_path, module="sslpath.predict")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr
    error = result.stderr.splitlines()[-1]
    assert error.startswith(f"sslpath.predict: error: no readable images in {folder}") and "nothing was written" in error


def test_one_image_file(tiny_trained, tmp_path):
    image = tmp_path / "one.png"
    Image.fromarray(tiny_trained["splits"]["test"].images[5].permute(1, 2, 0).numpy()).save(image)
    out = predict(compose_predict(f"ckpt={tiny_trained['ckpt']}", f"input={image}", f"out={tmp_path / 'o.csv'}"))
    rows = read_csv(out)
    assert [row["file"] for row in rows] == ["one.png"]
    assert rows[0]["predicted"] == f"class {tiny_trained['test_predictions'][5]['pred']}"


def test_formula_cells_are_escaped(tiny_trained, tmp_path):
    """File names come from the user's disk and class names from the checkpoint: neither may become a formula."""
    ckpt = torch.load(tiny_trained["ckpt"], map_location="cpu", weights_only=True)
    ckpt["sslpath"]["class_names"] = ['=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", *[f"c{i}" for i in range(5)]]
    hostile = tmp_path / "hostile.ckpt"
    torch.save(ckpt, hostile)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("=cmd.png", "+a.png", "-b.png", "@c.png", "plain.png"):
        Image.fromarray(tiny_trained["splits"]["test"].images[0].permute(1, 2, 0).numpy()).save(folder / name)
    out = predict(compose_predict(f"ckpt={hostile}", f"input={folder}", f"out={tmp_path / 'p.csv'}"))
    with out.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:6] == ["file", "predicted", '\'=HYPERLINK("http://x")', "'+1", "'-2", "'@SUM(A1)"]
    assert sorted(row[0] for row in rows[1:]) == ["'+a.png", "'-b.png", "'=cmd.png", "'@c.png", "plain.png"]
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    assert [spreadsheet_safe(c) for c in ("\tx", "\rx", "x=1", "0.5")] == ["'\tx", "'\rx", "x=1", "0.5"]


@pytest.mark.parametrize(
    "make_out, message",
    [
        (lambda tmp: tmp, "is a folder; pass a file name"),
        (lambda tmp: tmp / "file.txt" / "p.csv", "which is a file, not a folder"),
        (lambda tmp: Path("/proc/sslpath-test/p.csv"), "cannot be written: /proc is not writable"),
    ],
    ids=["existing-dir", "under-a-file", "unwritable-parent"],
)
def test_out_is_checked_before_any_work(make_out, message, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    cfg = compose_predict("ckpt=missing.ckpt", "input=missing", f"out={make_out(tmp_path)}")
    with pytest.raises(UserError, match=message) as err:  # out is refused before the missing ckpt is noticed
        predict(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["input=y"], "missing ckpt="),
        ([], "missing ckpt=, input="),
        (["ckpt=x.ckpt", "input=y", "+colour=red"], "unknown setting(s) colour; predict takes ckpt=, input="),
        (["ckpt=x.ckpt", "input=y", "batch_size=0"], "batch_size=0 is not a positive integer"),
        (["ckpt=x.ckpt", "input=y", "batch_size=abc"], "batch_size=abc is not a positive integer"),
        (["ckpt=x.ckpt", "input=y", "batch_size=2.5"], "batch_size=2.5 is not a positive integer"),
        (["ckpt=x.ckpt", "input=y", "batch_size=true"], "batch_size=True is not a positive integer"),
        (["ckpt=x.ckpt", "input=y", "split=holdout"], "split=holdout is not one of train, val, test"),
        (["ckpt=x.ckpt", "input=y", "device=tpu"], "device=tpu is not"),
        (["ckpt=x.ckpt", "input=nowhere"], "input=nowhere does not exist"),
        (["ckpt=nowhere.ckpt", "input=."], "ckpt: checkpoint not found: nowhere.ckpt"),
    ],
)
def test_bad_arguments_are_one_paragraph(overrides, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        predict(compose_predict(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "predictions.csv").exists()


def test_npz_is_read_through_header_checks(tiny_trained, tmp_path):
    """A forged header declaring a huge split is refused before any allocation; other splits are never read."""
    forged = tmp_path / "forged.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 16, 16, 3), np.uint8))
    header["shape"] = (10**9, 512, 512, 3)
    with np.load(tiny_trained["npz"]) as data, zipfile.ZipFile(forged, "w") as zf:
        with zf.open("test_images.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
        with zf.open("val_images.npy", "w") as f:
            np.lib.format.write_array(f, data["val_images"])
    args = [f"ckpt={tiny_trained['ckpt']}", f"input={forged}", f"out={tmp_path / 'p.csv'}"]
    with pytest.raises(UserError, match="declares arrays needing .* GiB"):
        predict(compose_predict(*args))
    assert len(read_csv(predict(compose_predict(*args, "split=val")))) == 36
    with pytest.raises(UserError, match="has no train_images"):
        predict(compose_predict(*args, "split=train"))


def test_help_page_writes_nothing(tmp_path):
    result = run_command("--help", cwd=tmp_path, module="sslpath.predict")
    assert result.returncode == 0 and "ckpt=PATH input=FILE_OR_DIR" in result.stdout
    assert list(tmp_path.iterdir()) == []
