"""The files of a tile folder (sslpath.data.folder): listed (hidden ones left out), hashed, decoded into tiles of
one size, and the unreadable ones named."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sslpath.core.errors import UserError
from sslpath.core.names import text_name
from sslpath.data.digest import file_digest
from sslpath.data.images import IMAGE_SUFFIXES, MAX_PIXELS, read_image
from sslpath.data.preprocess import to_tiles

log = logging.getLogger("sslpath.data.folder")  # where its warnings always came from
SHOWN_SKIPS = 10  # unreadable files a warning names; the sidecar lists all of them


def image_files(folder: Path) -> list[Path]:
    """Image files under folder, recursively and sorted; hidden files and folders are left out, and
    linked folders are not entered (as Path.rglob). A loop over a stack, not recursion: a folder
    nested a thousand deep is walked, not a RecursionError."""
    found, stack = [], [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                    found.append(Path(entry.path))
    return sorted(found)


@contextlib.contextmanager
def scanning(root: Path) -> Iterator[None]:
    """An OS error while the folder is listed (a file deleted mid-scan, a path too long) is the user's to fix."""
    try:
        yield
    except OSError as err:
        name = str(err.filename or "")
        name = name if len(name) <= 160 else f"{name[:80]}…{name[-60:]}"  # a path past PATH_MAX would fill the screen
        where = f"{err.strerror or err}: {name}" if name else str(err)
        if isinstance(err, FileNotFoundError):
            fix = "it was moved or deleted while the folder was read. Run again once nothing changes the folder."
        elif err.errno == errno.ENAMETOOLONG:
            fix = "a path under it is longer than the system allows (folders nested too deeply?). Move the images up."
        else:
            fix = "check that the folder and everything under it can be read."
        raise UserError(f"could not list the images of data.dir={root} ({where}): {fix}") from None


def subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def contents(files: list[Path]) -> dict[Path, str | None]:
    """Each file's sha256 (None for a file that cannot be read now: it is skipped, and named, when converting).
    A file that vanished since it was listed is not unreadable but a folder changing under us: re-raised."""
    contents = {}
    for file in tqdm(files, desc="checking files", unit="file", disable=None):
        try:
            contents[file] = file_digest(file)
        except FileNotFoundError:
            raise
        except OSError:
            contents[file] = None
    return contents


def read_tiles(
    files: list[Path], size: int, desc: str, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """uint8 N×size×size×3 tiles of the readable files, their indices in `files`, and the others."""
    tiles, readable, skipped = [], [], []
    for i, file in enumerate(tqdm(files, desc=desc, unit="img", disable=None)):  # disable=None: a bar only on a TTY
        try:
            image = read_image(file, max_pixels)
        except Exception as err:  # decoders raise many types on malformed files; one must not stop the rest
            skipped.append({"file": str(file), "error": f"{type(err).__name__}: {err}"})
            continue
        tiles.append(to_tiles(image[None], size)[0].permute(1, 2, 0))
        readable.append(i)
    stacked = torch.stack(tiles).numpy() if tiles else np.empty((0, size, size, 3), np.uint8)
    return stacked, np.array(readable, dtype=np.int64), skipped


def warn_skipped(skipped: list[dict[str, str]], root: Path, sidecar: Path) -> None:
    """Name the files read_tiles skipped (the first SHOWN_SKIPS; the sidecar lists all)."""
    if skipped:
        shown = "; ".join(text_name(f"{s['file']} ({s['error']})") for s in skipped[:SHOWN_SKIPS])
        more = f"; … and {len(skipped) - SHOWN_SKIPS} more" if len(skipped) > SHOWN_SKIPS else ""
        log.warning(
            "skipped %d unreadable image file(s) under %s (all listed in %s): %s%s. Replace or delete them.",
            len(skipped),
            root,
            sidecar,
            shown,
            more,
        )


def is_file_notes(notes: Any, key: str) -> bool:
    """A sidecar list of {"file": str, key: str} entries."""
    return isinstance(notes, list) and all(
        isinstance(n, dict) and set(n) == {"file", key} and all(isinstance(v, str) for v in n.values()) for n in notes
    )
