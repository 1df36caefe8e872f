"""Every console script answers `--help` as a fresh process, without importing the training stack (torch,
Lightning, torchvision): the help page is what a new user runs first, and must come at once. The commands
are read from pyproject.toml, so a new command is checked without touching this file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
HEAVY = ("torch", "lightning", "torchvision")


@pytest.mark.cli
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_answers_without_importing_the_training_stack(script, tmp_path):
    module, function = SCRIPTS[script].split(":")
    code = (
        f"import sys; sys.argv = [{script!r}, '--help']\n"
        f"import {module}\n"
        f"try:\n    {module}.{function}()\nexcept SystemExit as e:\n    print('EXIT', e.code)\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "HEAVY []" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert "EXIT 0" in result.stdout or "EXIT None" in result.stdout, result.stdout[-2000:]
    assert "usage" in result.stdout.lower() or "Config groups" in result.stdout
    assert list(tmp_path.iterdir()) == []  # a help page writes nothing
