"""A run dir's life: claimed by one process, cleaned of torn saves, resumed only with the same settings,
removed when the run stopped before it trained (nothing in it but the files written at start-up)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from sslpath.core.errors import UserError
from sslpath.core.paths import make_writable_dir

LOCK = ".sslpath.lock"
INTERRUPTED = "interrupted"  # checkpoints/interrupted.ckpt: written on SIGTERM / Ctrl-C
# What a run dir holds before its first training step: Hydra's record, the log, the resolved config, the lock.
START_UP_FILES = frozenset({".hydra", "train.log", "config.yaml", LOCK, f"{LOCK}.pid"})
# Run dirs this process created -> the topmost folder it created for them (the run dir or an ancestor).
_CREATED: dict[Path, Path] = {}


@contextlib.contextmanager
def claim(run_dir: Path) -> Iterator[None]:
    """Hold the run dir for this process; a second run into it fails at once, naming the first.

    Under DDP the processes of one run share its dir: rank 0 holds it for all of them.
    """
    if rank_zero_only.rank != 0:
        yield
        return
    note_if_new(run_dir)
    with removed_if_unstarted(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        make_writable_dir(run_dir, "run dir")
        lock = acquire(run_dir)
        owner = run_dir / f"{LOCK}.pid"
        try:
            owner.write_text(f"{os.getpid()}\n")
            remove_torn_saves(run_dir)
            yield
        finally:
            owner.unlink(missing_ok=True)
            lock.release()


def note_if_new(run_dir: Path) -> None:
    """Before a run dir is created: remember that this process made it (and which missing folders above it)."""
    run_dir = run_dir.absolute()
    if run_dir.exists() or run_dir in _CREATED:
        return
    top = run_dir
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    _CREATED[run_dir] = top


@contextlib.contextmanager
def removed_if_unstarted(run_dir: Path) -> Iterator[None]:
    """On any failure (an error, Ctrl-C, SIGTERM), remove the run dir if it never got past start-up."""
    try:
        yield
    except BaseException:
        remove_if_unstarted(run_dir)
        raise


def remove_if_unstarted(run_dir: Path) -> bool:
    """Remove a run dir this process created that holds only start-up files (and the empty folders made
    for it): a run that stopped before training leaves nothing to trip over. Never a dir that existed
    before (one given with hydra.run.dir, a resumed run), one with any other file, or one in use."""
    run_dir = run_dir.absolute()
    top = _CREATED.get(run_dir)
    if top is None or not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} <= START_UP_FILES:
        return False
    try:
        lock = acquire(run_dir)
    except UserError:  # another process holds it now: it is theirs
        return False
    try:
        close_log_files(run_dir)
        shutil.rmtree(run_dir)
    finally:
        lock.release()
    del _CREATED[run_dir]
    for folder in run_dir.parents:
        if not folder.is_relative_to(top):
            break
        try:
            folder.rmdir()  # only while empty: another run may have landed there meanwhile
        except OSError:
            break
    return True


def close_log_files(run_dir: Path) -> None:
    """Detach the log files Hydra opened in run_dir (train.log), so nothing writes there once it is gone."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(run_dir):
            root.removeHandler(handler)
            handler.close()


def acquire(run_dir: Path) -> FileLock:
    """The run dir's lock, held; a clear error naming the holder when another process has it."""
    lock = FileLock(run_dir / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = run_dir / f"{LOCK}.pid"
        pid = owner.read_text().strip() if owner.is_file() else "unknown"
        raise UserError(
            f"the run dir {run_dir} is in use by another sslpath process (pid {pid}). Two runs in one dir would "
            "mix their logs, checkpoints and results: wait for it to finish, or choose another dir "
            "(hydra.run.dir=…), or resume it later with resume=RUN_DIR."
        ) from None
    return lock


def check_can_start(run_dir: Path, resuming: bool) -> None:
    """Before Hydra writes anything into the run dir: it is free, and a new run never lands on a
    finished or interrupted one (their results, logs and checkpoints would mix)."""
    if run_dir.absolute() == Path(run_dir.absolute().anchor) or run_dir.absolute() == Path.home():
        raise UserError(
            f"the run dir {run_dir} is the file system's root or your home folder: a run writes its config, logs and "
            "checkpoints into its dir. Choose a folder of its own (hydra.run.dir=…, or paths.log_dir=…)."
        )
    if run_dir.is_dir():
        acquire(run_dir).release()
    # Results or checkpoints, not a config.yaml alone: a run that failed before training (bad data, say)
    # leaves nothing worth keeping, and the corrected command may reuse its dir.
    held = [name for name in ("metrics.json", "checkpoints") if (run_dir / name).exists()]
    if held and not resuming:
        raise UserError(
            f"the run dir {run_dir} already holds a run ({', '.join(held)}). A new run there would overwrite its "
            f"results and mix its logs: choose another dir (hydra.run.dir=…), continue that run with "
            f"resume={run_dir}, or delete it first."
        )


def check_new_sweep(sweep_dir: Path) -> None:
    """A multirun never lands on an earlier sweep's job dirs."""
    taken = sorted(p.name for p in sweep_dir.glob("*/config.yaml")) if sweep_dir.is_dir() else []
    if taken:
        raise UserError(
            f"the sweep dir {sweep_dir} already holds jobs of an earlier sweep ({len(taken)} job dirs). Choose another "
            "dir (hydra.sweep.dir=…); continue an interrupted job as a single run with resume=<its job dir>."
        )


# A temp file of `sslpath.core.files.atomic_output` (mkstemp: `.<name>.<random>.tmp`) of a file sslpath
# writes into a run dir or its checkpoints/. Nothing else matches: a user's own `.notes.tmp` is never touched.
TORN_SAVE = re.compile(r"\.[^/]+\.(ckpt|json|yaml|csv|npz|md|png|txt)\.[A-Za-z0-9_]+\.tmp")


def remove_torn_saves(run_dir: Path) -> list[Path]:
    """Temp files a killed atomic save left behind in the run dir or its checkpoints/: partial, never needed.
    Only those two folders, not the tree below: a run dir may be a user's existing folder."""
    torn = [
        p
        for folder in (run_dir, run_dir / "checkpoints")
        if folder.is_dir()
        for p in folder.iterdir()
        if TORN_SAVE.fullmatch(p.name) and p.is_file() and not p.is_symlink()
    ]
    for path in torn:
        path.unlink(missing_ok=True)
    return torn


def resume_checkpoint(run_dir: Path) -> Path:
    """The newest of last.ckpt and interrupted.ckpt in the run dir."""
    candidates = [run_dir / "checkpoints" / f"{name}.ckpt" for name in ("last", INTERRUPTED)]
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise UserError(
            f"nothing to resume in {run_dir}: it has no checkpoints/last.ckpt (the run stopped before its first "
            "epoch ended). Start it again without resume=/ckpt_path=last."
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def check_same_settings(cfg: DictConfig, run_dir: Path) -> None:
    """Resuming with other settings would silently mix two experiments in one run dir.

    Paths are left out of the comparison, so a run dir that was moved or copied resumes; so are
    callbacks, loggers and the report switch, which watch a run without changing what it learns.
    """
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return
    try:
        saved_cfg = OmegaConf.load(saved_file)
        if not isinstance(saved_cfg, DictConfig):
            raise ValueError("not a mapping of settings")
        saved = settings(saved_cfg, str(saved_cfg.get("paths", {}).get("output_dir", "")), resolve=False)
    except Exception as err:  # YAML, decoding or structure errors: the file is damaged
        raise UserError(
            f"cannot resume {run_dir}: its {saved_file.name} is unreadable ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else 'empty'}). It records the interrupted "
            "run's settings; restore it, or start a new run in another dir."
        ) from None
    current = settings(cfg, str(run_dir))
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if changed:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:8])
        raise UserError(
            f"cannot resume {run_dir}: its settings differ from this command's ({shown}). Repeat the "
            f"interrupted run's overrides (its resolved config is {saved_file}), or start a new run."
        )


def settings(cfg: DictConfig, run_dir: str, resolve: bool = True) -> dict[str, Any]:
    """Leaf key -> value, minus how the run was started, where its files live and what only watches it."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, sub in node.items():
                walk(sub, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=resolve), "")  # a stored file is data: never resolve it
    skip_roots = ("ckpt_path", "resume", "paths", "callbacks", "logger", "report", "report_figures")
    return {
        k: v
        for k, v in flat.items()
        if k.split(".")[0] not in skip_roots and not (isinstance(v, str) and run_dir and v.startswith(run_dir))
    }
