"""Folders replaced whole: filled beside their destination under a temporary name, then renamed onto it,
so a failure leaves the previous folder (or none), never half of one."""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from sslpath.core.errors import UserError

# Why an existing destination may not be replaced (None: it may, e.g. an earlier folder of the same kind).
Problem = Callable[[Path], "str | None"]


def staging_dir(dest: Path, fix: str, problem: Problem) -> Path:
    """An empty dir beside dest (so on its filesystem, to be renamed onto it), created with the umask's mode,
    once dest is known to be missing or a dir that may be replaced (`problem` says why not)."""
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} is a file, so no folder can be written there. {fix}")
    if dest.is_dir() and (why := problem(dest)):
        raise UserError(f"{why}. {fix}")
    staged = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        staged.mkdir(parents=True)
    except OSError as err:
        raise UserError(f"cannot write {dest} ({err.strerror or err}). {fix}") from None
    return staged


def replace_dir(staged: Path, dest: Path, problem: Problem) -> None:
    """Rename staged to dest. An old dest (checked again by `problem`) is moved aside first and deleted once
    staged is in place; if another process puts its own dest there in between, it is replaced in turn."""
    aside = staged.with_name(staged.name + ".old")
    for _ in range(5):
        shutil.rmtree(aside, ignore_errors=True)
        if dest.is_dir() and (why := problem(dest)):
            raise UserError(f"{why}; it appeared while {dest.name} was written, so nothing was put there.")
        with contextlib.suppress(FileNotFoundError):
            dest.rename(aside)
        try:
            staged.rename(dest)
        except OSError:
            if dest.exists():
                continue
            with contextlib.suppress(OSError):
                aside.rename(dest)  # put the old one back
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return
    raise UserError(f"{dest} kept being replaced by another process while it was written; run the command again.")


class StagedDirs:
    """Several folders filled in staging dirs and put in place together, only once all are complete:
    `stage(dest, fix, problem)` gives the dir to fill; leaving the block without an error renames each
    onto its destination, in reverse order (the first staged last: once it is in place, all are); any
    error deletes every staging dir and leaves the destinations as they were."""

    def __init__(self) -> None:
        self.staged: dict[Path, tuple[Path, Problem]] = {}

    def stage(self, dest: Path, fix: str, problem: Problem) -> Path:
        tmp = staging_dir(dest, fix, problem)
        self.staged[dest] = (tmp, problem)
        return tmp


@contextlib.contextmanager
def staged_dirs() -> Iterator[StagedDirs]:
    dirs = StagedDirs()
    try:
        yield dirs
        for dest, (tmp, problem) in reversed(dirs.staged.items()):
            replace_dir(tmp, dest, problem)
    finally:
        for tmp, _ in dirs.staged.values():
            shutil.rmtree(tmp, ignore_errors=True)  # gone already when renamed into place
