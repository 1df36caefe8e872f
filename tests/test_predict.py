"""sslpath.predict on a tiny trained checkpoint: npz and image-folder inputs, bad files, bad arguments."""

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import compose_cfg, run_cli
from sslpath.data import synthetic_splits
from sslpath.predict import main
from sslpath.train import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny baseline run plus its own synthetic data saved as a MedMNIST-format npz."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose_cfg(out, ["model=baseline"])
    data = cfg.data
    counts = {"train": data.train_count, "val": data.val_count, "test": data.test_count}
    splits = synthetic_splits(data.size, data.num_classes, counts, cfg.seed)
    metrics = run(cfg)
    npz = out / "synthetic.npz"
    np.savez(
        npz,
        **{f"{k}_images": s.images.permute(0, 2, 3, 1).numpy() for k, s in splits.items()},
        **{f"{k}_labels": s.labels.numpy()[:, None] for k, s in splits.items()},
    )
    with (out / "test_predictions.csv").open(newline="") as f:
        preds = [int(row["pred"]) for row in csv.DictReader(f)]
    return {"ckpt": metrics["ckpt_path"], "npz": npz, "splits": splits, "preds": preds}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def predicted_index(row: dict[str, str]) -> int:
    return int(row["predicted"].removeprefix("class "))


def test_npz_predictions_match_the_runs_test_predictions(trained, tmp_path, capsys):
    out = tmp_path / "p.csv"
    main([f"ckpt={trained['ckpt']}", f"input={trained['npz']}", f"out={out}", "batch_size=10"])
    rows = read_csv(out)
    assert list(rows[0]) == ["file", "predicted"] + [f"class {i}" for i in range(9)]
    assert [row["file"] for row in rows] == [f"synthetic.npz:test[{i}]" for i in range(36)]
    assert [predicted_index(row) for row in rows] == trained["preds"]
    probs = np.array([[float(row[f"class {i}"]) for i in range(9)] for row in rows])
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert "36 images" in capsys.readouterr().out

    main([f"ckpt={trained['ckpt']}", f"input={trained['npz']}", f"out={out}", "split=val"])
    assert read_csv(out)[-1]["file"] == "synthetic.npz:val[35]"


def test_image_folder_of_any_size_skips_corrupt_files(trained, tmp_path):
    tiles = trained["splits"]["test"].images.permute(0, 2, 3, 1).numpy()
    folder = tmp_path / "tiles"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(tiles[0]).save(folder / "a_native.png")  # model size, lossless: must match the npz
    Image.fromarray(tiles[1]).resize((40, 40), Image.Resampling.NEAREST).save(folder / "b_large.jpg", quality=95)
    Image.fromarray(tiles[2]).resize((31, 23)).convert("RGBA").save(folder / "sub" / "c_wide.tiff")
    (folder / "broken.png").write_bytes(b"not an image at all")
    buf = io.BytesIO()
    Image.fromarray(tiles[3]).resize((64, 64)).save(buf, format="PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "notes.txt").write_text("not an image suffix: ignored")

    result = run_cli(f"ckpt={trained['ckpt']}", "input=tiles", cwd=tmp_path, module="sslpath.predict", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(tmp_path / "predictions.csv")
    assert [row["file"] for row in rows] == ["a_native.png", "b_large.jpg", "sub/c_wide.tiff"]
    assert predicted_index(rows[0]) == trained["preds"][0]
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 2 and "broken.png" in skipped[0] and "truncated.png" in skipped[1]
    assert "3 images" in result.stdout and "2 skipped" in result.stdout and "Traceback" not in result.stderr


def test_nothing_readable_exits_2_without_output(trained, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 garbage")
    with pytest.raises(SystemExit) as exit_info:
        main([f"ckpt={trained['ckpt']}", f"input={folder}", f"out={tmp_path / 'p.csv'}"])
    assert exit_info.value.code == 2 and not (tmp_path / "p.csv").exists()
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.jpg" in err and f"no readable images in {folder}" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["ckpt=x.ckpt", "input=y", "colour=red"], "unknown argument 'colour=red'; valid keys are ckpt=, input=, out="),
        (["input=y"], "missing ckpt="),
        (["ckpt=x.ckpt", "input=y", "batch_size=0"], "batch_size=0 is not a positive integer"),
    ],
)
def test_bad_arguments_list_the_valid_keys(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
