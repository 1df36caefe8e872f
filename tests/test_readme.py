"""Every command the README lists runs, in its smoke form, from an empty directory: the README's own
lines are parsed (a new command there is tested without touching this file), made small (tiny backbone,
16-px synthetic data, one epoch, CPU) and run in order, each later one using the files the earlier ones
wrote, as a new user would."""

from __future__ import annotations

import runpy
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factories import TINY, run_command, write_npz

ROOT = Path(__file__).resolve().parents[1]
# Overrides that make a train command a smoke run; the README's values for the same keys give way.
SMOKE = [o for o in TINY if not o.startswith("+")] + ["+trainer.enable_model_summary=false"]
NOT_RUN = ("python -m pytest",)  # the test tier itself


def readme_commands() -> list[str]:
    """The README's command lines inside ```bash blocks that run sslpath code (its modules or scripts)."""
    lines, inside = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash" and not inside
            continue
        command = line.split("  #")[0].strip()
        if inside and command.startswith(("python -m sslpath.", "python scripts/")) and not command.startswith(NOT_RUN):
            lines.append(command)
    return lines


def with_smoke(args: list[str], data: bool) -> list[str]:
    """args with each smoke override replacing the README's value of the same key (data keys only where
    the README did not name its own data file)."""
    smoke = [o for o in SMOKE if data or not o.startswith("data")]
    keys = {o.split("=", 1)[0] for o in smoke}
    return [a for a in args if a.split("=", 1)[0] not in keys] + smoke


def resolve(arg: str, work: Path, home: Path) -> str:
    """The README's placeholders, as the user fills them in from what earlier commands printed."""
    if arg.startswith("~/"):
        return str(home / arg[2:])
    if "outputs/multiruns/<date>_<time>" in arg:
        (sweep,) = (work / "outputs" / "multiruns").iterdir()
        return arg.replace("outputs/multiruns/<date>_<time>", str(sweep))
    if arg.startswith("ckpt=outputs/runs/<run>/"):
        baseline = sorted((work / "outputs" / "runs").glob("*_baseline"))[0]
        (best,) = (baseline / "checkpoints").glob("best-*.ckpt")  # one epoch here: best-epoch000
        return f"ckpt={best}"
    assert "<" not in arg, f"a README placeholder this test cannot fill: {arg}"
    return arg


def run_script(script: Path, args: list[str]) -> int:
    old = sys.argv
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
        return 0
    except SystemExit as exit_:
        return exit_.code or 0
    finally:
        sys.argv = old


def test_the_readme_lists_the_commands_this_test_runs():
    commands = readme_commands()
    modules = {c.split()[2] for c in commands if c.startswith("python -m")}
    assert {"sslpath.train", "sslpath.report", "sslpath.evaluate", "sslpath.predict"} <= modules, commands
    assert any("-m model=" in c for c in commands) and any(c.startswith("python scripts/make_sample.py") for c in commands)


@pytest.mark.cli
def test_every_readme_command_runs_in_its_smoke_form(tmp_path, monkeypatch):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    (home / ".medmnist").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    # What the README's download would have put there: a MedMNIST-format PathMNIST stand-in, 28 px, 9 classes.
    write_npz(home / ".medmnist" / "pathmnist.npz", counts=(1000, 20, 20), size=28, num_classes=9)
    tiles = work / "my_tiles"
    tiles.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(tiles / f"tile{i}.png")

    ended = 0  # the second the last training ended in
    for command in readme_commands():
        words = [resolve(w, work, home) for w in shlex.split(command)]
        if words[1] == "-m":
            module, args = words[2], words[3:]
            if module == "sslpath.train":
                args = with_smoke(args, data=not any(a.startswith("data.path=") for a in args))
                # Run dirs are named to the second (outputs/runs/<date>_<time>_<name>), taken while the command
                # runs, and a smoke run can start and end within one: start each after the second the last one
                # ended in, as a user typing the commands does. (A second run refused from a finished run dir
                # is test_reliability's test_a_new_run_never_lands_on_a_finished_one.)
                while int(time.time()) <= ended:
                    time.sleep(0.05)
            result = run_command(*args, cwd=work, module=module)
            ended = int(time.time())
            assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        else:
            monkeypatch.chdir(work)
            assert run_script(ROOT / words[1], words[2:]) == 0, command
    # what the commands were to leave behind
    assert (work / "sample.npz").is_file() and (work / "predictions.csv").is_file()
    assert len(list((work / "outputs" / "runs").glob("*/metrics.json"))) >= 4
