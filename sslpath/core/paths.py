"""Paths: where output may go (checked before any work, so a bad path fails at once, not after an hour), and
where earlier results are found."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from sslpath.core.errors import UserError

DEFAULT_KEY = "paths.log_dir (or the SSLPATH_LOG_DIR environment variable)"


def make_writable_dir(path: Path, what: str, key: str = DEFAULT_KEY) -> None:
    """Create the folder `path` (and its parents) and prove a file can be written in it; `key` is the
    setting that points it elsewhere, named in the message."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write the {what} {path} ({err.strerror or err}). Point {key} at a writable folder.") from None


def check_writable(path: Path, setting: str) -> None:
    """Without creating anything: a file could be written at `path` (a file to write, or a folder to write
    in). The folder itself, or else its nearest existing ancestor, must be a writable folder."""
    path = Path(path).expanduser().absolute()
    ancestor = path if path.is_dir() else next(p for p in path.parents if p.exists())
    if not ancestor.is_dir():
        raise UserError(
            f"{setting}={path} lies under {ancestor}, which is a file, not a folder. Pass a path in a writable folder."
        )
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise UserError(
            f"{setting}={path} cannot be written: {ancestor} is not writable ({err.strerror or err}). Pass a path "
            "in a folder you can write to."
        ) from None


def check_out_path(out: Path, setting: str) -> Path:
    """`out` with its symlinks resolved, refused when it cannot be resolved (a symlink loop, an unreadable
    folder) or when an existing part of its path is not a folder. Returns the resolved path."""
    try:
        resolved = out.resolve()
    except (OSError, RuntimeError) as err:  # pathlib raises RuntimeError for a symlink loop
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise UserError(
            f"{setting}={out} cannot be used: its path cannot be resolved ({reason}; a symlink loop or an "
            f"unreadable folder). Pass another {setting}= path."
        ) from None
    for parent in resolved.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise UserError(
                    f"{setting}={out} lies under {parent}, which is a file, not a folder. Pass another {setting}= "
                    "path, in a writable folder."
                )
            break
    return resolved


def find_results(paths: Sequence[str | Path], name: str, nothing: Callable[[Path], str]) -> list[Path]:
    """The result files called `name` (metrics.json, robustness.json) that the paths give, each once, in path
    order: a path that is such a file, or a folder holding one, gives that one (never what lies below it: a
    run dir may hold other runs, e.g. its pretrain/); any other folder gives every one below it (a sweep).
    A path that gives none is a UserError: `nothing(path)` goes on "there is no … Pass …"."""
    found: dict[Path, None] = {}  # ordered set: a result named twice is read once
    for path in map(Path, paths):
        if path.is_file() and path.name == name:
            hits = [path.resolve()]
        elif (path / name).is_file():
            hits = [(path / name).resolve()]
        else:
            hits = sorted(p.resolve() for p in path.rglob(name)) if path.is_dir() else []
        if not hits:
            what = "does not exist" if not path.exists() else f"holds no {name}, in it or below it"
            raise UserError(f"{path} {what}, so {nothing(path)}")
        found.update(dict.fromkeys(hits))
    return list(found)
