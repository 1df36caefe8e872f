"""Smoke runs of scripts/benchmark.py on the CPU: every mode measured, one section appended per run.

Times are never asserted (they depend on the machine and its load), only that they were measured.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from factories import cli_env

pytestmark = pytest.mark.slow  # runs the whole benchmark script: the slow tier

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "benchmark.py"
TINY = ["--device", "cpu", "--backbones", "tiny", "--size", "16", "--steps", "2", "--warmup", "1", "--batch-size", "8"]


def run_benchmark(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=600
    )


def sections(text: str) -> list[list[dict[str, str]]]:
    """Each appended section's table, as one dict per row (column header -> cell)."""
    tables = []
    for part in text.split("### Benchmark run")[1:]:
        lines = [line for line in part.splitlines() if line.startswith("|")]
        head = [c.strip() for c in lines[0].strip("|").split("|")]
        assert set(lines[1]) <= set("|-:"), lines[1]
        tables.append([dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]])
    return tables


def check_row(row: dict[str, str], modes: str) -> None:
    for mode in modes:
        assert float(row[f"({mode}) img/s"]) > 0, row
    for ratio in ("(b)/(a)", "(b)/(c)"):
        if ratio in row:
            assert float(row[ratio]) > 0, row
    peaks = row[f"peak MiB {'/'.join(modes)}"].split("/")
    assert len(peaks) == len(modes) and all(int(p) > 0 for p in peaks), row


def write_npz(path: Path, size: int = 16, counts: tuple[int, int, int] = (40, 9, 9)) -> None:
    """A small MedMNIST-format file (9 classes, like PathMNIST)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 9).astype(np.uint8)[:, None]
    np.savez(path, **arrays)


def test_benchmark_script_measures_every_mode_and_appends_sections(tmp_path):
    docs = tmp_path / "benchmarks.md"
    first = run_benchmark(*TINY, "--docs", str(docs), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (table,) = sections(docs.read_text())
    assert [(r["backbone"], r["model"]) for r in table] == [("tiny", "baseline"), ("tiny", "simclr")]
    for row in table:
        check_row(row, "abc")
    assert "### Benchmark run" in first.stdout  # the section is printed too

    # A second run (here on a MedMNIST-format npz) appends a second section, keeping the first.
    npz = tmp_path / "tiles.npz"
    write_npz(npz)
    second = run_benchmark(*TINY, "--models", "baseline", "--data", str(npz), "--docs", str(docs), cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    text = docs.read_text()
    assert text.startswith("# Training throughput benchmarks")
    first_table, second_table = sections(text)
    assert first_table == table
    (row,) = second_table
    check_row(row, "abc")
    settings = [line for line in text.splitlines() if line.startswith("Settings:")]
    assert len(settings) == 2
    assert "device=cpu precision=32-true compile=off size=16 batch=8 steps=2 warmup=1" in settings[0]
    assert "data=synthetic" in settings[0] and "data=tiles.npz" in settings[1]


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(["--data", "missing.npz"], "--data missing.npz: no such file", id="missing-npz"),
        pytest.param(
            ["--backbones", "resnet18", "--stems", "imagenet", "--size", "16"],
            "too small for model.backbone.stem=imagenet",
            id="stem-too-small",
        ),
        pytest.param(
            ["--device", "cuda"],
            "no CUDA GPU",
            id="no-cuda",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present"),
        ),
    ],
)
def test_benchmark_script_reports_user_errors(tmp_path, args, message):
    result = run_benchmark("--device", "cpu", "--steps", "1", "--warmup", "1", "--no-docs", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr and "Traceback" not in result.stderr
