"""MedMNIST-format npz files, read as untrusted data.

Each member's header (shape, dtype) is checked before a byte of it is loaded, only the members a
run uses are read, and nothing is unpickled: a file that declares a 2 TiB array, carries a huge
unused member or a pickled object is refused with a message, not an allocation error.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from sslpath.core.errors import UserError
from sslpath.data.preprocess import to_tiles
from sslpath.data.splits import SPLITS, Split

# Optional member: tiles without labels, which only SSL pretraining sees (FolderDataModule writes it).
UNLABELED = "unlabeled_images"
NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))
MIN_TILE = 4  # pixels a side: smaller tiles hold no picture to learn from (and 0×0 ones cannot be resized)

Header = tuple[tuple[int, ...], np.dtype]


def memory_budget() -> int:
    """Bytes a loaded file may take: half the machine's physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # not POSIX: no cheap answer, so no cap
        return 1 << 62


def _open(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise UserError(
            f"data file not found: {path}. Pass an existing MedMNIST-format .npz with data.path=FILE, "
            "or use data=pathmnist data.download=true, or data=synthetic for an offline dry run."
        )
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise UserError(
            f"{path} is not a readable .npz file ({type(err).__name__}: {err}). It may be truncated or "
            "not an npz at all: download it again (data.download=true verifies its MD5) or point "
            "data.path at a MedMNIST-format npz."
        ) from None


def _header(zf: zipfile.ZipFile, path: Path, key: str) -> Header:
    """Shape and dtype a member declares, read from its .npy header alone."""
    try:
        with zf.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            if version not in NPY_VERSIONS:
                raise ValueError(f"unsupported .npy format version {version}")
            # Version 3.0 differs from 2.0 only in allowing utf-8 field names, which plain arrays lack.
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
    except Exception as err:  # any malformed header: zip, magic, or dict literal
        raise UserError(
            f"{path}: member {key} is not a valid .npy array ({type(err).__name__}: {err}). The file is "
            "corrupt or was not written by numpy; re-save it with np.savez."
        ) from None
    if dtype.hasobject:
        raise UserError(
            f"{path}: {key} holds Python objects (dtype {dtype}), which would need unpickling. A "
            "MedMNIST-format npz holds uint8 images and integer labels only; re-save it with plain arrays."
        )
    return shape, dtype


def _load(zf: zipfile.ZipFile, path: Path, key: str) -> np.ndarray:
    try:
        with zf.open(f"{key}.npy") as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except Exception as err:  # truncated or corrupt data after a valid header
        raise UserError(
            f"{path}: could not read {key} ({type(err).__name__}: {err}); the file is truncated or corrupt. "
            "Download it again (data.download=true verifies its MD5) or re-save it."
        ) from None


def read_arrays(path: str | Path, size: int | None = None, unlabeled: bool = False) -> dict[str, np.ndarray]:
    """The six split members (plus `unlabeled_images` when asked for and present), as stored.

    Every header is checked first, including that loading and converting the tiles to size×size
    (None: their stored size) fits in memory; only then is any array read.
    """
    path = Path(path).expanduser()
    with _open(path) as zf:
        members = {name.removesuffix(".npy") for name in zf.namelist() if name.endswith(".npy")}
        keys = [f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")]
        missing = [k for k in keys if k not in members]
        if missing:
            raise UserError(
                f"{path} lacks the key(s) {missing} (it has {sorted(members)}). A MedMNIST-format npz holds "
                "train/val/test_images (uint8 N×H×W×3 or N×H×W) and train/val/test_labels (N×1)."
            )
        if unlabeled and UNLABELED in members:
            keys.append(UNLABELED)
        headers = {key: _header(zf, path, key) for key in keys}
        _check_headers(path, headers)
        _check_memory(path, [shape for key, (shape, _) in headers.items() if key.endswith("_images")], size)
        return {key: _load(zf, path, key) for key in keys}


def read_images(path: str | Path, split: str, size: int) -> torch.Tensor:
    """One split's images alone (for predict, which needs no labels) as uint8 N×3×size×size tiles,
    after the same header and memory checks as `read_arrays`."""
    path = Path(path).expanduser()
    key = f"{split}_images"
    with _open(path) as zf:
        members = sorted(name.removesuffix(".npy") for name in zf.namelist() if name.endswith(".npy"))
        if key not in members:
            raise UserError(f"{path} has no {key} (it has {members}); choose split=train, val or test to match it.")
        shape, dtype = _header(zf, path, key)
        _check_images(path, key, shape, dtype)
        if shape[0] == 0:
            raise UserError(f"{path}: {key} holds no images; choose another split= or pass another file.")
        _check_memory(path, [shape], size)
        return to_tiles(_load(zf, path, key), size)


def read_npz(path: str | Path, num_classes: int, size: int | None = None, unlabeled: bool = False) -> dict[str, Split]:
    """train/val/test Splits of uint8 N×3×size×size tiles (None keeps the stored size).

    With `unlabeled=True` a file's `unlabeled_images` come back too, as split "unlabeled" with
    label -1. Any defect is a UserError naming the file.
    """
    arrays = read_arrays(path, size, unlabeled)
    splits = {}
    for split in SPLITS:
        images, labels = arrays.pop(f"{split}_images"), arrays.pop(f"{split}_labels").reshape(-1)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise UserError(
                f"{path}: {split}_labels holds values from {labels.min()} to {labels.max()} ({labels.dtype}), "
                f"but data.num_classes={num_classes} needs integers in [0, {num_classes - 1}]. Fix the "
                "labels or set data.num_classes."
            )
        splits[split] = Split(to_tiles(images, size or images.shape[1]), torch.from_numpy(labels.astype(np.int64)))
    if UNLABELED in arrays:
        images = arrays.pop(UNLABELED)
        splits["unlabeled"] = Split(to_tiles(images, size or images.shape[1]), torch.full((len(images),), -1))
    return splits


def _check_headers(path: Path, headers: dict[str, Header]) -> None:
    for key, (shape, dtype) in headers.items():
        if key.endswith("_images"):
            _check_images(path, key, shape, dtype)
    for split in SPLITS:
        n = headers[f"{split}_images"][0][0]
        shape, dtype = headers[f"{split}_labels"]
        if len(shape) == 2 and shape[1] > 1:
            raise UserError(
                f"{path}: {split}_labels has shape {shape}: {shape[1]} labels per image (a multi-label set "
                "such as ChestMNIST). sslpath trains single-label classifiers; use a multi-class or binary "
                "MedMNIST set."
            )
        if shape not in ((n,), (n, 1)) or not np.issubdtype(dtype, np.integer):
            raise UserError(
                f"{path}: {split}_labels is {dtype} of shape {shape} for {n} images; expected ({n}, 1) integer class indices."
            )
        if n == 0:
            raise UserError(f"{path}: the {split} split is empty; every split needs at least one image.")


def _check_images(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype != np.uint8:
        raise UserError(
            f"{path}: {key} has dtype {dtype}, expected uint8 (0–255). Convert the images "
            "with np.clip(x, 0, 255).astype(np.uint8) before saving."
        )
    square = len(shape) in (3, 4) and shape[1] == shape[2]
    if not square or (len(shape) == 4 and shape[3] not in (1, 3)):
        raise UserError(
            f"{path}: {key} has shape {shape}, expected N×H×W×3 (RGB) or N×H×W (grayscale) square tiles (e.g. N×28×28×3)."
        )
    if shape[1] < MIN_TILE:
        raise UserError(
            f"{path}: {key} has shape {shape}: {shape[1]}×{shape[2]} pixel tiles, smaller than the minimum of "
            f"{MIN_TILE}×{MIN_TILE}. The file is damaged or not a tile set; re-save it with its real images "
            "(e.g. N×28×28×3)."
        )


def _check_memory(path: Path, image_shapes: list[tuple[int, ...]], size: int | None) -> None:
    """Refuse before allocating when the peak of loading and converting would pass memory_budget().

    Members convert one after another: while one is converted, its stored array, an RGB N×3×H×W
    copy and (when resizing) the resized chunks and their concatenation coexist with the tiles
    already made. Products are floats so a forged shape cannot overflow.
    """
    peak = done = 0.0
    for shape in image_shapes:
        n, h, w = (float(d) for d in shape[:3])
        stored = float(np.prod(shape, dtype=np.float64))
        rgb = 3 * n * h * w
        s = float(size or h)
        tiles = rgb if s == h else 3 * n * s * s
        converting = stored + rgb + (2 * tiles if s != h else 0) + 16 * n  # + labels as loaded and int64
        peak = max(peak, done + converting)
        done += tiles + 8 * n
    if peak > memory_budget():
        raise UserError(
            f"{path} declares arrays needing {peak / 2**30:.1f} GiB to load and convert, more than half of "
            f"this machine's memory ({memory_budget() / 2**30:.1f} GiB). The file is corrupt or not a "
            "MedMNIST tile set, or too large here: use a smaller size (data.size) or a machine with more memory."
        )
