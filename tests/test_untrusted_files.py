"""User-provided files are untrusted data: a bit-rotted or edited checkpoint, a degenerate npz, a huge
image, an output path that would destroy an input or runs into a symlink loop. Each is refused with
one paragraph, and nothing of the user's is overwritten."""

from __future__ import annotations

import importlib.util
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslpath.core.errors import UserError
from sslpath.data.images import TooLargeImage, read_image
from sslpath.data.npz import read_arrays, read_images
from sslpath.data.tile_files import read_tiles
from sslpath.evaluation.evaluate import check_finite, evaluate
from sslpath.evaluation.predict import predict, refuse_unknown_overrides
from sslpath.models.checkpoint import load_inference_model

from factories import SYNTHETIC, compose_evaluate, compose_predict, read_csv, run_command

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_sample.py"


@pytest.fixture(scope="module")
def real(tiny_trained) -> dict:
    run = tiny_trained
    return {**run, "checkpoint": torch.load(run["ckpt"], map_location="cpu", weights_only=True)}


def one_paragraph(err: pytest.ExceptionInfo, *parts: str) -> None:
    text = str(err.value)
    assert "\n" not in text and all(p in text for p in parts), text


def predict_args(real: dict, out: Path, *more: str) -> list[str]:
    return [f"ckpt={real['ckpt']}", f"input={real['npz']}", f"out={out}", "device=cpu", *more]


# --- predict's out= never destroys the checkpoint, the input or another file -----------------------------


@pytest.mark.parametrize("target", ["ckpt", "npz"])
def test_out_equal_to_an_input_is_refused(real, tmp_path, target):
    before = real[target].read_bytes()
    with pytest.raises(UserError) as err:
        predict(compose_predict(*predict_args(real, real[target])))
    one_paragraph(err, "is the same file as", "Pass another out= path")
    link = tmp_path / "link.csv"
    link.symlink_to(real[target])
    with pytest.raises(UserError) as err:
        predict(compose_predict(*predict_args(real, link)))
    one_paragraph(err, "is the same file as")
    assert real[target].read_bytes() == before


def test_out_replaces_only_a_predictions_csv(real, tmp_path):
    other = tmp_path / "notes.csv"
    other.write_text("name,age\nx,1\n")
    with pytest.raises(UserError) as err:
        predict(compose_predict(*predict_args(real, other)))
    one_paragraph(err, "is not a predictions CSV", "Pass another out= path")
    assert other.read_text() == "name,age\nx,1\n"
    out = tmp_path / "p.csv"
    predict(compose_predict(*predict_args(real, out)))
    predict(compose_predict(*predict_args(real, out, "split=val")))  # its own earlier CSV: replaced
    assert read_csv(out)[0]["file"] == "synthetic.npz:val[0]"


def test_out_in_a_symlink_loop_is_refused(real, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("loopA").symlink_to("loopA")
    with pytest.raises(UserError) as err:
        predict(compose_predict(*predict_args(real, Path("loopA/x.csv"))))
    one_paragraph(err, "out=loopA/x.csv cannot be used", "Pass another out= path")
    with pytest.raises(UserError) as err:
        evaluate(compose_evaluate(f"ckpt={real['ckpt']}", *SYNTHETIC, "out=loopA", "device=cpu", "report=false"))
    one_paragraph(err, "out=loopA cannot be used")


# --- checkpoints: bit rot, non-finite weights, odd keys, weights that do not fit --------------------------


def rot(src: Path, dest: Path) -> Path:
    """`src` with 64 bytes in the middle of its largest tensor overwritten, zip directory untouched."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED and "/data/" in info.filename
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[start : start + 64] = b"\xff" * 64  # 0xffffffff is a NaN as float32
    dest.write_bytes(bytes(data))
    return dest


def test_bit_rotted_checkpoint_is_refused(real, tmp_path):
    with pytest.raises(UserError) as err:
        load_inference_model(rot(real["ckpt"], tmp_path / "rotted.ckpt"), "ckpt")
    one_paragraph(err, "is corrupt: the checksum of its member", "/data/")


def test_rotted_checkpoint_exits_2_and_writes_nothing(real, tmp_path):
    rotted = rot(real["ckpt"], tmp_path / "rotted.ckpt")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run_command(f"ckpt={rotted}", f"input={real['npz']}", "device=cpu", cwd=cwd, module="sslpath.predict")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "is corrupt" in result.stderr
    assert list(cwd.iterdir()) == []


def edited(real: dict, path: Path, edit) -> Path:
    state = dict(real["checkpoint"]["state_dict"])
    edit(state)
    torch.save({**real["checkpoint"], "state_dict": state}, path)
    return path


def set_nan(state: dict) -> None:
    key = next(k for k, v in state.items() if k.startswith("head.") and v.is_floating_point())
    state[key] = torch.full_like(state[key], math.nan)


def reshape_and_drop(state: dict) -> None:
    head = [k for k in state if k.startswith("head.")]
    state[head[0]] = torch.zeros(3, 3)
    del state[head[1]]
    state["backbone.extra.weight"] = torch.zeros(2)


@pytest.mark.parametrize(
    "edit, parts",
    [
        (set_nan, ["holds NaN or infinite values", "corrupt, or its training run diverged"]),
        (lambda s: s.__setitem__(1, torch.zeros(1)), ["non-string key(s) [1]"]),
        (reshape_and_drop, ["do not fit (1 missing: head.", "1 unexpected: backbone.extra.weight", "1 wrong shape: head."]),
    ],
    ids=["nan-weights", "non-string-key", "mismatch"],
)
def test_edited_state_dict_is_refused(real, tmp_path, edit, parts):
    with pytest.raises(UserError) as err:
        load_inference_model(edited(real, tmp_path / "edited.ckpt", edit), "ckpt")
    one_paragraph(err, *parts)


def test_non_finite_metrics_are_never_written():
    with pytest.raises(UserError) as err:
        check_finite({"test_loss": math.nan, "data": {"mean": [0.5]}}, Path("x.ckpt"))
    one_paragraph(err, "NaN or infinite metrics")
    check_finite({"test_loss": 0.1, "test_auc": None}, Path("x.ckpt"))


# --- data files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [0, 1, 3])
def test_npz_of_tiny_tiles_is_refused(tmp_path, side):
    path = tmp_path / "tiny.npz"
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.zeros((4, side, side, 3), np.uint8)
        arrays[f"{split}_labels"] = np.zeros((4, 1), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(UserError) as err:
        read_arrays(path, 28)
    one_paragraph(err, f"{side}×{side} pixel tiles, smaller than the minimum of 4×4")
    with pytest.raises(UserError):
        read_images(path, "test", 28)


def test_image_over_the_pixel_cap_is_unreadable_with_a_reason(real, tmp_path):
    big, small = tmp_path / "imgs" / "big.png", tmp_path / "imgs" / "small.png"
    big.parent.mkdir()
    Image.new("RGB", (40, 30)).save(big)
    Image.new("RGB", (8, 8)).save(small)
    with pytest.raises(TooLargeImage, match="40x30 pixels is more than the cap of 1,000 pixels"):
        read_image(big, max_pixels=1000)
    assert read_image(big).shape == (30, 40, 3)
    tiles, readable, skipped = read_tiles([big, small], 8, "test", max_pixels=1000)
    assert readable.tolist() == [1] and skipped[0]["file"] == str(big) and "TooLargeImage" in skipped[0]["error"]
    out = tmp_path / "p.csv"
    predict(compose_predict(f"ckpt={real['ckpt']}", f"input={big.parent}", f"out={out}", "device=cpu", "max_pixels=1000"))
    assert [row["file"] for row in read_csv(out)] == ["small.png"]
    with pytest.raises(UserError, match="max_pixels=0 is not a positive integer"):
        predict(compose_predict(f"ckpt={real['ckpt']}", f"input={big.parent}", f"out={out}", "max_pixels=0"))


# --- make_sample ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def make_sample():
    spec = importlib.util.spec_from_file_location("make_sample_untrusted", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_make_sample_never_overwrites_its_source(real, tmp_path, make_sample, capsys):
    source = tmp_path / "good.npz"
    source.write_bytes(real["npz"].read_bytes())
    link = tmp_path / "link.npz"
    link.symlink_to(source)
    before = source.read_bytes()
    for out in (source, link, tmp_path / "." / "good.npz"):
        with pytest.raises(SystemExit) as exit_:
            make_sample([str(source), str(out), "--counts", "9,9,9"])
        assert exit_.value.code == 2 and "would destroy the source" in capsys.readouterr().err
    assert source.read_bytes() == before and link.is_symlink()


def test_make_sample_refuses_a_negative_seed(real, tmp_path, make_sample, capsys):
    with pytest.raises(SystemExit) as exit_:
        make_sample([str(real["npz"]), str(tmp_path / "s.npz"), "--counts", "9,9,9", "--seed", "-1"])
    assert exit_.value.code == 2 and "expected a non-negative whole number" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()


# --- unknown settings -------------------------------------------------------------------------------------


def test_unknown_setting_is_the_tools_own_error(tmp_path):
    for argv in (["foo=1"], ["ckpt=x", "colour@pkg=red"]):
        with pytest.raises(UserError, match="unknown setting"):
            refuse_unknown_overrides(argv)
    refuse_unknown_overrides(["ckpt=x", "+foo=1", "~out", "hydra.run.dir=.", "--cfg", "job", "-m", "batch_size=1,2"])
    result = run_command("foo=1", cwd=tmp_path, module="sslpath.predict")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("sslpath.predict: error: unknown setting(s) foo; predict takes ckpt=")
    assert list(tmp_path.iterdir()) == []
