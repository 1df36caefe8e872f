"""The files of a tile folder (sslpath.data.folder): listed (hidden ones left out), hashed, decoded into tiles of
one size, and the unreadable ones named."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sslpath.core.names import text_name
from sslpath.data.digest import file_digest
from sslpath.data.images import IMAGE_SUFFIXES, MAX_PIXELS, read_image
from sslpath.data.preprocess import to_tiles

log = logging.getLogger("sslpath.data.folder")  # where its warnings always came from
SHOWN_SKIPS = 10  # unreadable files a warning names; the sidecar lists all of them


def image_files(folder: Path) -> list[Path]:
    """Image files under folder, recursively and sorted; hidden files and folders are left out."""

    def visible(p: Path) -> bool:
        return not any(part.startswith(".") for part in p.relative_to(folder).parts)

    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and visible(p))


def subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def contents(files: list[Path]) -> dict[Path, str | None]:
    """Each file's sha256 (None for a file that cannot be read now: it is skipped, and named, when converting)."""
    contents = {}
    for file in tqdm(files, desc="checking files", unit="file", disable=None):
        try:
            contents[file] = file_digest(file)
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
