"""Issue 15, files: one image opener (raster formats only, modes scaled), one rule for names that become
text or paths (run_name, class folders, cache names), one CSV writer, and robustness records read as
untrusted data."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write
from PIL import EpsImagePlugin, Image

from sslpath.core.errors import UserError
from sslpath.core.files import csv_text
from sslpath.core.names import MAX_CLASS_NAME, MAX_NAME_BYTES, check_class_names, check_path_name, path_name, text_name
from sslpath.data.corruptions import Suite
from sslpath.data.folder import TileFolder
from sslpath.data.images import UnreadableImage, read_image
from sslpath.evaluation.benchmark import Robustness
from sslpath.evaluation.predict import image_batches, predict
from sslpath.models.checkpoint import read_metadata
from sslpath.reporting.robustness import records_csv
from sslpath.results.intervals import wilson_interval
from sslpath.results.robustness import read_robustness_record, robustness_record
from sslpath.training.fit import train
from sslpath.training.hydra_callbacks import CheckOutputDir

from factories import TINY_TRAINER, compose_cfg, compose_predict, read_csv, run_command, run_main

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


# ----------------------------------------------------------------------------------------------
# One opener: raster formats only, never an external program


@pytest.fixture
def no_ghostscript(monkeypatch) -> list[str]:
    """Records any use of Pillow's EPS reader or of a subprocess; pretends Ghostscript is installed, so an
    opener that let EPS through would call it (this machine has no `gs`)."""
    calls: list[str] = []
    original_open = EpsImagePlugin.EpsImageFile._open

    def eps_open(self):
        calls.append("EpsImageFile._open")
        return original_open(self)

    def popen(*args, **kwargs):
        calls.append(f"subprocess: {args[0] if args else kwargs}")
        raise AssertionError("a subprocess was started while opening an image")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", eps_open)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs", raising=False)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    monkeypatch.setattr(subprocess, "Popen", popen)
    return calls


def test_eps_named_png_is_refused_without_reaching_ghostscript(tmp_path, no_ghostscript):
    path = tmp_path / "tile.png"
    path.write_bytes(EPS)
    with Image.open(path) as unrestricted:  # what the old opener did: Pillow goes by content, not by name
        assert unrestricted.format == "EPS"
    no_ghostscript.clear()
    with pytest.raises(UnreadableImage, match=r"not a BMP, JPEG, PNG or TIFF image; sslpath opens no other format"):
        read_image(path)
    assert no_ghostscript == []


def test_eps_in_a_tile_folder_is_listed_unreadable_and_never_decoded(tmp_path, no_ghostscript):
    root = tmp_path / "tiles"
    for name, colour in (("a", 40), ("b", 200)):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (colour,) * 3).save(root / name / f"{i}.png")
    (root / "a" / "evil.png").write_bytes(EPS)
    tiles = TileFolder(root, None, 8, 0.2, 0.2, 0, tmp_path / "cache")
    tiles.prepare()
    skipped = json.loads(tiles.sidecar.read_text())["skipped"]
    assert [s["file"] for s in skipped] == [str(root / "a" / "evil.png")]
    assert "not a BMP, JPEG, PNG or TIFF image" in skipped[0]["error"] and no_ghostscript == []


def test_predict_skips_an_eps_input_without_reaching_ghostscript(tmp_path, no_ghostscript, capsys):
    path = tmp_path / "slide.png"
    path.write_bytes(EPS)
    skipped: list[str] = []
    assert list(image_batches(path, 8, 4, skipped)) == [] and skipped == [str(path)]
    assert "not a BMP, JPEG, PNG or TIFF image" in capsys.readouterr().err and no_ghostscript == []


def test_other_formats_are_refused_and_allowed_ones_read_whatever_their_suffix(tmp_path):
    gif = tmp_path / "gif.png"
    Image.new("P", (4, 4)).save(gif, format="GIF")
    with pytest.raises(UnreadableImage, match="not a BMP"):
        read_image(gif)
    jpeg = tmp_path / "jpeg.png"
    Image.new("RGB", (4, 4), (10, 200, 30)).save(jpeg, format="JPEG", quality=100)
    assert np.abs(read_image(jpeg).astype(int) - [10, 200, 30]).max() <= 2


# ----------------------------------------------------------------------------------------------
# Modes: scaled, not clipped


def grey16(tmp_path: Path, value: int, name: str) -> Path:
    path = tmp_path / name
    Image.fromarray(np.full((4, 4), value, np.uint16)).save(path)
    return path


@pytest.mark.parametrize("value, expected", [(0, 0), (257, 1), (20000, 78), (40000, 156), (65535, 255)])
def test_16_bit_grey_is_divided_by_257(tmp_path, value, expected):
    for suffix in (".png", ".tif"):
        image = read_image(grey16(tmp_path, value, f"x{suffix}"))
        assert image.dtype == np.uint8 and image.shape == (4, 4, 3) and (image == expected).all(), suffix


def test_two_16_bit_tiles_of_different_intensity_stay_different(tmp_path):
    dark, bright = (read_image(grey16(tmp_path, v, f"{v}.png")) for v in (20000, 40000))
    assert dark[0, 0, 0] == 78 and bright[0, 0, 0] == 156  # Pillow's own convert("RGB") clips both to 255


def test_big_endian_16_bit_and_32_bit_integer_grey(tmp_path):
    big = tmp_path / "big.tif"
    Image.frombytes("I;16B", (2, 1), np.array([514, 65535], ">u2").tobytes()).save(big)
    assert read_image(big)[0, :, 0].tolist() == [2, 255]
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.array([[0, 25700, 65535]], np.int32)).save(wide)
    assert Image.open(wide).mode == "I" and read_image(wide)[0, :, 0].tolist() == [0, 100, 255]
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(wide)
    with pytest.raises(UnreadableImage, match=r"a I image with values from 0 to 70000; sslpath reads I images as 0–65535"):
        read_image(wide)


def test_float_grey_is_read_as_0_to_1_intensities(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(path)
    assert read_image(path)[0, :, 0].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0.0, 2.0]], np.float32)).save(path)
    with pytest.raises(UnreadableImage, match="values from 0 to 2; sslpath reads F images as 0–1 intensities"):
        read_image(path)


def test_other_modes_through_pillows_conversion(tmp_path):
    cases = {
        "L": (Image.new("L", (2, 2), 7), [7, 7, 7]),
        "1": (Image.new("1", (2, 2), 1), [255, 255, 255]),
        "LA": (Image.new("LA", (2, 2), (9, 0)), [9, 9, 9]),  # alpha dropped, the grey under it kept
        "RGBA": (Image.new("RGBA", (2, 2), (1, 2, 3, 0)), [1, 2, 3]),
        "CMYK": (Image.new("CMYK", (2, 2), (0, 0, 0, 0)), [255, 255, 255]),
    }
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 11, 22, 33])
    palette.info["transparency"] = 0
    cases["P"] = (palette, [11, 22, 33])
    for mode, (image, rgb) in cases.items():
        path = tmp_path / f"{mode}.{'tif' if mode == 'CMYK' else 'png'}"
        image.save(path)
        out = read_image(path)
        assert out.dtype == np.uint8 and out.shape == (2, 2, 3) and out[0, 0].tolist() == rgb, mode


def test_16_bit_rgb_keeps_each_channels_high_byte(tmp_path):
    """Pillow reads 16-bit-per-channel RGB as 8-bit RGB by its high bytes (v // 256): scaled, not clipped."""
    pixels = np.array([[[1000, 30000, 65535], [257, 512, 0]]], ">u2")
    scanlines = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0)  # 2×1 px, 16 bits per sample, truecolour
    path = tmp_path / "rgb16.png"
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    assert read_image(path).tolist() == (pixels // 256).tolist()


def test_16_bit_classes_stay_apart_in_the_tile_cache(tmp_path):
    root = tmp_path / "tiles"
    for name, value in (("dim", 20000), ("bright", 40000)):
        (root / name).mkdir(parents=True)
        for i in range(3):
            grey16(root / name, value, f"{i}.png")
    tiles = TileFolder(root, None, 4, 0.34, 0.34, 0, tmp_path / "cache")
    with np.load(tiles.prepare()) as cached:
        images, labels = cached["train_images"], cached["train_labels"][:, 0]
    assert images[labels == 0].max() == 156 and images[labels == 1].max() == 78  # classes sorted: bright, dim


# ----------------------------------------------------------------------------------------------
# Names: one rule for text and for path components


def test_text_name_escapes_what_a_record_cannot_hold():
    undecodable = os.fsdecode(b"caf\xe9")
    assert text_name(undecodable) == "caf\\xe9" and text_name("a\nb\tc\x1b\u2028") == "a\\nb\\tc\\x1b\\u2028"
    assert text_name("stroma, épithélium") == "stroma, épithélium"
    text_name(undecodable).encode("utf-8")  # no lone surrogate left


@pytest.mark.parametrize(
    "name, safe",
    [
        ("../../../../escaped", "_._.._.._.._escaped"),
        ("..", "_."),
        (".", "_"),
        ("", "_"),
        (".hidden", "_hidden"),
        ("a\\b/c", "a_b_c"),
        ("line\nbreak", "line_nbreak"),
        (os.fsdecode(b"caf\xe9"), "caf_xe9"),
        ("ok name-1.2", "ok name-1.2"),
    ],
)
def test_path_name_is_one_safe_component(name, safe):
    assert path_name(name) == safe and path_name(safe) == safe


def test_long_names_are_cut_with_a_digest_that_keeps_them_apart():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(path_name(a).encode()) <= MAX_NAME_BYTES and path_name(a) != path_name(b)
    assert len(path_name("é" * 200).encode()) <= MAX_NAME_BYTES and path_name(path_name(a)) == path_name(a)


@pytest.mark.parametrize(
    "value, reason",
    [
        ("../../../../escaped", r"contains a path separator .* such as run_name=escaped\."),
        ("a/b", "contains a path separator"),
        (".x", "starts with '.'"),
        ("a\nb", "holds control characters"),
        ("x" * 121, "is 121 bytes long, more than 120"),
        ("  ", "is not a name"),
    ],
)
def test_check_path_name_refuses_in_one_paragraph(value, reason):
    with pytest.raises(UserError, match=reason):
        check_path_name(value, "run_name")
    assert check_path_name("finetune-simclr", "run_name") == "finetune-simclr"


def hydra_cfg(tmp_path: Path, *overrides: str, task: list[str] | None = None):
    """conf/train.yaml with Hydra's own node; `task`: the command line Hydra records (a sweep's, say)."""
    GlobalHydra.instance().clear()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.log_dir={tmp_path}/logs", *overrides], return_hydra_config=True)
    if task is not None:
        with read_write(cfg), open_dict(cfg):
            cfg.hydra.overrides.task = task
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_run_name_outside_the_log_dir_is_refused_before_the_run_dir(tmp_path, capsys):
    cfg = hydra_cfg(tmp_path, "run_name=../../../../escaped")
    with pytest.raises(SystemExit) as exit_info:
        CheckOutputDir().on_run_start(cfg)
    assert exit_info.value.code == 2 and "run_name='../../../../escaped' cannot name a folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_swept_run_name_is_checked_before_the_sweep_starts(tmp_path, capsys):
    cfg = hydra_cfg(tmp_path, task=["model=baseline", "run_name=ok,../../up"])
    with pytest.raises(SystemExit) as exit_info:
        CheckOutputDir().on_multirun_start(cfg)
    assert exit_info.value.code == 2 and "run_name='../../up' cannot name a folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_run_name_escape_exits_2_from_the_cli_and_writes_nothing(tmp_path):
    result = run_command("data=synthetic", f"paths.log_dir={tmp_path}/logs", "run_name=../../../../escaped", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("sslpath.train: error: run_name='../../../../escaped' cannot name a folder")
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


def test_class_names_one_limit_when_written_and_read():
    check_class_names(["x" * MAX_CLASS_NAME, "b"], "the data")
    meta = {
        "kind": "baseline",
        "backbone": "tiny",
        "stem": "cifar",
        "num_classes": 2,
        "class_names": ["x" * MAX_CLASS_NAME, "b"],
        "image_size": 16,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "label_fraction": 1.0,
        "seed": 0,
    }
    assert read_metadata({"sslpath": meta}, "c.ckpt").class_names[0] == "x" * MAX_CLASS_NAME
    longer = {**meta, "class_names": ["x" * (MAX_CLASS_NAME + 1), "b"]}
    with pytest.raises(UserError, match=f"is {MAX_CLASS_NAME + 1} characters long, more than the limit of {MAX_CLASS_NAME}"):
        check_class_names(longer["class_names"], "the data")
    with pytest.raises(UserError, match="refused c.ckpt: its sslpath metadata has class_names"):
        read_metadata({"sslpath": longer}, "c.ckpt")
    with pytest.raises(UserError, match="refused c.ckpt"):
        read_metadata({"sslpath": {**meta, "class_names": ["a\nb", "b"]}}, "c.ckpt")


def class_folder(root: Path, name: bytes, value: int, count: int = 3) -> None:
    folder = os.path.join(os.fsencode(root), name)
    os.makedirs(folder)
    for i in range(count):
        Image.new("RGB", (8, 8), (value,) * 3).save(os.fsdecode(os.path.join(folder, b"%d.png" % i)))


def test_class_folders_of_any_bytes_become_printable_class_names_with_originals_kept(tmp_path, caplog):
    root = tmp_path / "tiles"
    for i, name in enumerate((b"caf\xe9", b"new\nline", b"=cmd")):
        class_folder(root, name, 60 * i)
    tiles = TileFolder(root, None, 8, 0.34, 0.34, 0, tmp_path / "cache")
    assert tiles.class_names == ["=cmd", "caf\\xe9", "new\\nline"]
    tiles.prepare()
    sidecar = json.loads(tiles.sidecar.read_text())
    assert sidecar["class_names"] == tiles.class_names
    assert [os.fsencode(n) for n in sidecar["class_folders"]] == [b"=cmd", b"caf\xe9", b"new\nline"]
    # the warning naming files (here: identical tiles across splits) prints them escaped: one line, encodable
    (warning,) = [r.getMessage() for r in caplog.records if "same bytes" in r.getMessage()]
    assert "\n" not in warning and "new\\nline" in warning and warning.encode("utf-8")


def test_a_folder_with_undecodable_and_newline_class_names_trains_records_and_predicts(tmp_path, capsys):
    """Each class name ends up in metrics.json, the CSVs, the checkpoint and the Projector's metadata.tsv."""
    root = tmp_path / "tiles"
    folders = (b"caf\xe9", b"new\nline", b"x" * MAX_CLASS_NAME)
    for i, name in enumerate(folders):
        class_folder(root, name, 40 + 80 * i, count=5)
    data = ["data=folder", f"data.dir={root}", f"data.cache_dir={tmp_path}/cache", "data.size=16", "data.batch_size=8"]
    metrics = train(compose_cfg(tmp_path / "run", ["model=baseline", *data, *TINY_TRAINER], tiny=False))
    names = ["caf\\xe9", "new\\nline", "x" * MAX_CLASS_NAME]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["per_class_acc"].keys() == set(names)
    assert read_csv(tmp_path / "run" / "test_predictions.csv")[0].keys() >= {f"p_{n}" for n in names}
    (tsv,) = (tmp_path / "run").rglob("metadata.tsv")
    assert tsv.read_text().splitlines() == [names[i] for i in (0, 1, 2)]  # one test tile per class, one row each
    out = tmp_path / "p.csv"
    predict(compose_predict(f"ckpt={metrics['ckpt_path']}", f"input={root}", f"out={out}", "device=cpu"))
    rows = read_csv(out)
    assert len(rows) == 15 and list(rows[0])[2:] == names and rows[0]["file"] == "caf\\xe9/0.png"


@pytest.mark.parametrize(
    "names, message",
    [
        ([b"x" * 201, b"b"], "is 201 characters long, more than the limit of 200"),
        ([b"a\n", b"a\\n"], r"has the class name\(s\) \['a\\\\n'\] more than once"),
    ],
)
def test_class_folders_a_checkpoint_could_not_carry_are_refused_before_any_conversion(tmp_path, names, message):
    root = tmp_path / "tiles"
    for name in names:
        class_folder(root, name, 10)
    with pytest.raises(UserError, match=message):
        TileFolder(root, None, 8, 0.34, 0.34, 0, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_cache_name_of_a_data_dir_near_the_file_name_limit(tmp_path):
    root = tmp_path / ("d" * 250)
    class_folder(root, b"a", 10)
    class_folder(root, b"b", 200)
    tiles = TileFolder(root, None, 8, 0.34, 0.34, 0, tmp_path / "cache")
    assert len(tiles.cache_file.name.encode()) < 160 and tiles.prepare().is_file()


# ----------------------------------------------------------------------------------------------
# CSVs: one writer, formula cells escaped, numbers left numbers


def test_csv_text_escapes_formula_cells_but_not_numbers():
    rows = list(csv.reader(io.StringIO(csv_text([["=1+2", "@x", "+a", "-b", "ok", -0.5, 3, None, "a\nb"]]))))
    assert rows == [["'=1+2", "'@x", "'+a", "'-b", "ok", "-0.5", "3", "", "a\\nb"]]


# ----------------------------------------------------------------------------------------------
# Robustness records: untrusted data, every number range-checked


def record(run_name: str = "baseline", clean: float = 0.8) -> dict:
    """A record as sslpath.evaluate writes it (through robustness_record), for 2 corruptions × 2 severities."""
    suite = Suite(
        params={"jpeg_compression": (50, 30, 15, 10, 7), "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.1)}, severities=(1, 2)
    )

    def result(acc: float) -> dict:
        return {"test_acc": acc, "test_auc": 0.9, "test_loss": 0.5}

    results = {"jpeg_compression": {1: result(0.7), 2: result(0.6)}, "gaussian_noise": {1: result(0.75), 2: result(0.9)}}
    robustness = Robustness(clean=result(clean), results=results, suite=suite, num_images=10)
    return json.loads(json.dumps(robustness_record(robustness, run_name, "baseline", "/x/best.ckpt")))


def write_record(folder: Path, data: dict | str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "robustness.json"
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_a_record_as_written_is_read_and_compared(tmp_path):
    write_record(tmp_path / "a", record())
    assert read_robustness_record(tmp_path / "a" / "robustness.json") == record()
    run_main(
        "sslpath.robustness_report",
        str(tmp_path / "a"),
        str(write_record(tmp_path / "b", record("probe")).parent),
        "--out",
        str(tmp_path / "c"),
    )
    mca = 100 * record()["summary"]["mean_corruption_acc"]
    lo, hi = wilson_interval(0.8, 10, 0.95)  # a record without stored intervals: Wilson for the clean accuracy
    assert (
        f"| probe | 80.0 [{100 * lo:.1f}, {100 * hi:.1f}] | {mca:.1f} |"
        in (tmp_path / "c" / "robustness_comparison.md").read_text()
    )


def edit(path: str, value: object) -> dict:
    """record() with the value at `path` (dotted keys and list indices) replaced; `...` deletes it."""
    data = record()
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = data
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    "data, message",
    [
        (edit("summary.clean_acc", 12.5), r"`summary.clean_acc` is 12.5, not a number from 0 to 1"),
        (json.dumps(record()).replace('"clean_acc": 0.8', '"clean_acc": NaN'), "NaN is not a JSON number"),
        (json.dumps(record()).replace('"clean_acc": 0.8', '"clean_acc": 1e999'), "too large to be finite at summary.clean_acc"),
        (edit("rows.0.acc", "0.8"), r"`rows\[0\].acc` is '0.8', not a number from 0 to 1"),
        (edit("rows.3.acc", 0.95), r"`rows\[3\].relative_drop` is 0.0625\d*, not -0.1875, from the accuracies"),
        (edit("summary.mean_corruption_acc", 0.5), r"`summary.mean_corruption_acc` is 0.5, not 0.7375, what its rows give"),
        (edit("rows.1.relative_drop", -5.0), r"`rows\[1\].relative_drop` is -5.0"),
        (edit("rows.2.loss", -1), r"`rows\[2\].loss` is -1, not a number >= 0"),
        (edit("rows.2.param", 99), r"`rows\[2\].param` is 99, not 30, as in params"),
        (edit("rows.4.severity", 7), r"`rows\[4\].severity` is 7, not 2"),
        (edit("rows", record()["rows"][:3]), "`rows` has 3 rows, not 5"),
        (edit("rows.1", [1, 2]), r"`rows\[1\]` is \[1, 2\], not an object with corruption"),
        (edit("summary", []), "`summary` is \\[\\], not an object"),
        (edit("summary.severities", list(range(1, 10**4))), "ascending list of distinct severities from 1 to 5"),
        (edit("summary.corruptions", ["clean", "jpeg_compression"]), "distinct corruption names \\(not 'clean'\\)"),
        (edit("summary.num_images", 10**30), "a whole number of images from 1 to 10\\*\\*9"),
        (edit("summary.seed", True), "`summary.seed` is True"),
        (edit("params", {}), "`params` is \\{\\}, not an object with one entry per corruption"),
        (edit("params.jpeg_compression", [1]), "`params.jpeg_compression` is \\[1\\], not a list of 5 parameters"),
        (edit("run_name", "r" * 10_000), "`run_name` is 'rrrrr"),
        (edit("run_name", ...), "`run_name` is missing"),
        (edit("summary.clean_auc", ...), "`summary.clean_auc` is missing"),
        ([record()], "it holds no JSON object"),
        ("", "cannot be read as JSON"),
        (b"\xff\xfe", "cannot be read as JSON \\(UnicodeDecodeError"),
        ("[" * 100_000 + "]" * 100_000, "cannot be read as JSON \\(RecursionError"),
    ],
)
def test_crafted_records_are_refused_in_one_paragraph(tmp_path, capsys, data, message):
    write_record(tmp_path / "a", data)
    with pytest.raises(SystemExit) as exit_info:
        run_main("sslpath.robustness_report", str(tmp_path / "a"), "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("sslpath.robustness_report: error: ")
    assert "Re-run that evaluation" in err and err.count("\n") == 1 and not (tmp_path / "out").exists()
    assert re.search(message, err), err


def test_a_huge_record_is_refused_before_it_is_read(tmp_path, capsys):
    path = write_record(tmp_path / "a", record())
    os.truncate(path, 64 * 2**20)  # sparse: no disk used
    with pytest.raises(SystemExit):
        run_main("sslpath.robustness_report", str(tmp_path / "a"), "--out", str(tmp_path / "out"))
    assert "67,108,864 bytes, more than the 16,777,216" in capsys.readouterr().err


def test_without_out_one_dir_gets_its_own_and_several_dirs_are_refused(tmp_path, capsys):
    a = write_record(tmp_path / "x" / "deep" / "a", record()).parent
    b = write_record(tmp_path / "y" / "deep" / "b", record("probe")).parent
    with pytest.raises(SystemExit) as exit_info:
        run_main("sslpath.robustness_report", str(a), str(b))
    assert exit_info.value.code == 2 and "2 DIRs given and no --out" in capsys.readouterr().err
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == [a / "robustness.json", b / "robustness.json"]
    run_main("sslpath.robustness_report", str(a))
    assert (a / "robustness" / "robustness_comparison.md").is_file() and not (tmp_path / "robustness").exists()


def test_robustness_csv_escapes_formula_cells(tmp_path):
    rows = list(csv.DictReader(io.StringIO(records_csv([record(run_name='=HYPERLINK("http://x")')]))))
    assert rows[0]["run_name"] == '\'=HYPERLINK("http://x")' and rows[0]["relative_drop"] == "0.0"
    assert rows[-1]["relative_drop"] == str((0.8 - 0.9) / 0.8)  # a negative drop stays a number
