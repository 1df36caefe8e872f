"""Classify new images with a trained checkpoint (`python -m sslpath.predict`).

`input` is a MedMNIST-format .npz (its `split` images), a folder of images (searched recursively,
any size) or one image file. The model is rebuilt only from the checkpoint's validated metadata
and weights (`sslpath.models.checkpoint.load_inference_model`), and every image takes training's own
path: `to_tiles` resizes it, the evaluation transform normalises it with the checkpoint's mean and
std. So an npz's test split gets exactly the predictions its training run wrote.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from sslpath.core.devices import resolve_device
from sslpath.core.errors import UserError
from sslpath.core.files import atomic_write_text, csv_text
from sslpath.core.names import text_name
from sslpath.core.paths import check_out_path, check_writable
from sslpath.data.augment import BatchTransform
from sslpath.data.images import MAX_PIXELS, read_image
from sslpath.data.npz import read_images
from sslpath.data.preprocess import to_tiles
from sslpath.data.splits import SPLITS
from sslpath.data.stain_norm import StainNormalizer
from sslpath.data.tile_files import image_files
from sslpath.evaluation.tta import DihedralTTA
from sslpath.models.checkpoint import load_inference_model
from sslpath.results.artifacts import class_logits

PROG = "sslpath.predict"
HELP = "python -m sslpath.predict --help"  # the one usage text: conf/predict.yaml's help
KEYS = ("ckpt", "input", "out", "split", "batch_size", "device", "max_pixels", "tta")
HEADER = "file,predicted,"  # how every predictions CSV this tool writes begins: the only file `out` may replace


def check_predict_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings as plain values, every one checked before any work is done."""
    extra = sorted(set(map(str, cfg)) - set(KEYS))
    if extra:
        raise UserError(
            f"unknown setting(s) {', '.join(extra)}; predict takes {', '.join(f'{k}=' for k in KEYS)}. All settings: {HELP}."
        )
    missing = [k for k in KEYS if cfg.get(k) in (None, "")]  # `???`, null, empty, or removed with ~key
    if missing:
        raise UserError(f"missing {', '.join(f'{k}=' for k in missing)}. All settings: {HELP}.")
    args = {k: cfg[k] if k in ("batch_size", "max_pixels", "tta") else str(cfg[k]) for k in KEYS}
    if not isinstance(args["tta"], bool):
        raise UserError(f"tta={args['tta']} is not true or false; tta=true averages each tile's 8 rotations and mirrors.")
    if args["split"] not in SPLITS:
        raise UserError(f"split={args['split']} is not one of {', '.join(SPLITS)}; it picks the npz images to classify.")
    if type(args["batch_size"]) is not int or args["batch_size"] < 1:
        raise UserError(f"batch_size={args['batch_size']} is not a positive integer; use e.g. batch_size=256.")
    if type(args["max_pixels"]) is not int or args["max_pixels"] < 1:
        raise UserError(
            f"max_pixels={args['max_pixels']} is not a positive integer; it caps the pixels of an image that is "
            "decoded (default 50000000)."
        )
    out = Path(args["out"]).expanduser()
    resolved = check_out_path(out, "out")
    if out.is_dir():
        raise UserError(f"out={out} is a folder; pass a file name for the predictions, e.g. out={out / 'predictions.csv'}.")
    ckpt, source = Path(args["ckpt"]).expanduser(), Path(args["input"]).expanduser()
    for setting, path in (("ckpt", ckpt), ("input", source)):
        if _same_file(resolved, path):
            raise UserError(
                f"out={out} is the same file as {setting}={path}; writing the predictions there would destroy it. "
                "Pass another out= path, e.g. out=predictions.csv."
            )
    if os.path.lexists(resolved):
        _check_replaceable(out, resolved)
    check_writable(out, "out")
    return {**args, "ckpt": ckpt, "input": source, "out": out}


def _same_file(resolved: Path, other: Path) -> bool:
    try:
        return resolved == other.resolve() or (resolved.exists() and other.exists() and os.path.samefile(resolved, other))
    except (OSError, RuntimeError):
        return False  # an unresolvable ckpt or input is refused with its own message later


def _check_replaceable(out: Path, resolved: Path) -> None:
    """An existing `out` is replaced only when it is a predictions CSV (its first line says so)."""
    first = ""
    if resolved.is_file():
        try:
            with resolved.open("rb") as f:
                first = f.read(4096).decode("utf-8", errors="replace")
        except OSError:
            first = ""
    if not first.startswith(HEADER):
        raise UserError(
            f"out={out} already exists and is not a predictions CSV written by {PROG} (its first line does not "
            f"start with {HEADER!r}); predict never replaces other files. Pass another out= path, e.g. "
            "out=predictions.csv in a new place, or move the file away."
        )


def npz_batches(path: Path, split: str, size: int, batch_size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
    """One split of a MedMNIST-format npz, header-checked, resized as training resized it."""
    tiles = read_images(path, split, size)
    for start in range(0, len(tiles), batch_size):
        stop = min(start + batch_size, len(tiles))
        yield [f"{path.name}:{split}[{i}]" for i in range(start, stop)], tiles[start:stop]


def image_batches(
    source: Path, size: int, batch_size: int, skipped: list[str], max_pixels: int | None = None
) -> Iterator[tuple[list[str], torch.Tensor]]:
    """An image file, or the images under a folder; an unreadable file is reported, recorded and skipped."""
    files = [source] if source.is_file() else image_files(source)
    names: list[str] = []
    tiles: list[torch.Tensor] = []
    for file in files:
        try:
            tiles.append(to_tiles(read_image(file, max_pixels or MAX_PIXELS)[None], size)[0])
        except Exception as err:  # decoders raise many types on malformed files; one bad file must not stop the rest
            print(f"skipped {text_name(str(file))}: {str(err) or type(err).__name__}", file=sys.stderr, flush=True)
            skipped.append(str(file))
            continue
        names.append(file.name if file == source else file.relative_to(source).as_posix())
        if len(tiles) == batch_size:
            yield names, torch.stack(tiles)
            names, tiles = [], []
    if tiles:
        yield names, torch.stack(tiles)


def write_image_predictions(path: Path, names: list[str], probs: np.ndarray, class_names: list[str]) -> None:
    """file, predicted class, then one probability column per class."""
    rows = [["file", "predicted", *class_names]]
    rows += [[name, class_names[int(p.argmax())], *(f"{v:.6f}" for v in p)] for name, p in zip(names, probs)]
    atomic_write_text(path, csv_text(rows))


def predict(cfg: DictConfig) -> Path:
    """Check the settings, classify every readable image, write the CSV; returns its path."""
    args = check_predict_settings(cfg)
    device = resolve_device(args["device"])
    source = args["input"]
    if not source.exists():
        raise UserError(f"input={source} does not exist; pass a MedMNIST-format .npz, an image, or a folder of images.")
    model, meta = load_inference_model(args["ckpt"], "ckpt")
    model.to(device)
    stain = StainNormalizer.from_record(meta.stain_norm)  # as the checkpoint's training normalised its tiles
    transform = BatchTransform(mean=meta.mean, std=meta.std, channels_last=False, stain=stain)
    skipped: list[str] = []
    if source.is_file() and source.suffix.lower() == ".npz":
        batches = npz_batches(source, args["split"], meta.image_size, args["batch_size"])
    else:
        batches = image_batches(source, meta.image_size, args["batch_size"], skipped, args["max_pixels"])
    names: list[str] = []
    probs: list[np.ndarray] = []
    logits = partial(class_logits, model, transform, device=device)
    logits = DihedralTTA(logits) if args["tta"] else logits
    for batch_names, images in batches:
        probs.append(logits(images).softmax(dim=1).numpy())
        names += batch_names
    if names and not all(np.isfinite(p).all() for p in probs):
        raise UserError(
            f"the model of {args['ckpt']} gave NaN or infinite outputs for some images of {source}; nothing was "
            "written. The checkpoint is damaged or its training diverged: use another checkpoint of the run."
        )
    if not names:
        raise UserError(
            f"no readable images in {source} ({len(skipped)} unreadable). Pass a MedMNIST-format .npz, an image, "
            "or a folder of PNG/JPEG/TIFF/BMP images; nothing was written."
        )
    write_image_predictions(args["out"], names, np.concatenate(probs), meta.class_names)
    print(
        f"{PROG}: {len(names)} image{'s' if len(names) != 1 else ''} -> {args['out']} ({len(skipped)} skipped; {meta.kind} model "
        f"{args['ckpt'].name}, {meta.image_size} px, {device})",
        flush=True,
    )
    return args["out"]


def refuse_unknown_overrides(argv: list[str]) -> None:
    """`foo=1` names no setting: refuse it with the tool's own message (Hydra would exit 1 with a
    struct error before `check_predict_settings` could); `+foo=1` reaches `check_predict_settings`, which refuses it there."""
    extra = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:  # Hydra's flags and their values (--cfg job, -m)
            continue
        key = arg.split("=", 1)[0].split("@", 1)[0]
        if key.startswith(("+", "~", "hydra.", "hydra/")) or key == "hydra":
            continue
        if key not in KEYS:
            extra.append(key)
    if extra:
        raise UserError(
            f"unknown setting(s) {', '.join(extra)}; predict takes {', '.join(f'{k}=' for k in KEYS)}. All settings: {HELP}."
        )
