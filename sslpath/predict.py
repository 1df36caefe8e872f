"""Classify new images with a trained checkpoint.

    python -m sslpath.predict ckpt=PATH input=FILE_OR_DIR [out=predictions.csv] [split=test]
                              [batch_size=256] [device=auto]

`input` is a MedMNIST-format .npz (its `split` images), a folder of PNG/JPEG/TIFF images (searched
recursively, any size, resized to the model's input size) or one image file. The model is rebuilt
from the plain config and weights in the checkpoint: no code is unpickled, and only sslpath's own
model and backbone classes may be instantiated from it.
"""

from __future__ import annotations

import copy
import csv
import io
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from PIL import Image

from sslpath.checkpoints import load_checkpoint
from sslpath.data import SPLITS, Split, resize_splits
from sslpath.errors import UserError, exit_on_user_error
from sslpath.files import atomic_write_text
from sslpath.models import MODEL_KINDS, Classifier

USAGE = (
    "python -m sslpath.predict ckpt=PATH input=FILE_OR_DIR [out=predictions.csv] [split=test] "
    "[batch_size=256] [device=auto]"
)
OPTIONS: dict[str, str | None] = {  # key -> default; None: required
    "ckpt": None,
    "input": None,
    "out": "predictions.csv",
    "split": "test",
    "batch_size": "256",
    "device": "auto",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
# What a checkpoint's model config may instantiate: anything else could run arbitrary code.
ALLOWED_TARGETS = {f"{cls.__module__}.{cls.__qualname__}" for cls in MODEL_KINDS.values()}
ALLOWED_TARGET_PREFIXES = ("sslpath.backbones.",)

Batches = Iterator[tuple[list[str], torch.Tensor]]  # (names, uint8 N×3×H×W)


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    """key=value arguments, Hydra-style, without Hydra's config machinery."""
    valid = ", ".join(f"{key}=" for key in OPTIONS)
    args = {key: value for key, value in OPTIONS.items() if value is not None}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in OPTIONS:
            raise UserError(f"unknown argument {arg!r}; valid keys are {valid}. Usage: {USAGE}")
        args[key] = value
    missing = [key for key in OPTIONS if not args.get(key)]
    if missing:
        raise UserError(f"missing {', '.join(f'{key}=' for key in missing)}. Usage: {USAGE}")
    if args["split"] not in SPLITS:
        raise UserError(f"split={args['split']} is not one of {', '.join(SPLITS)}.")
    if not args["batch_size"].isdigit() or int(args["batch_size"]) < 1:
        raise UserError(f"batch_size={args['batch_size']} is not a positive integer.")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name} is not a torch device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is visible; use device=cpu or device=auto.")
    return device


def _targets(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "_target_" in node:
            yield str(node["_target_"])
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


def load_model(path: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """The checkpoint's model in eval mode, and its sslpath metadata (kind, class names, image size)."""
    ckpt = load_checkpoint(path)
    meta = ckpt.get("sslpath")
    if not isinstance(meta, dict) or not {"model_config", "class_names", "image_size"} <= meta.keys():
        raise UserError(
            f"{path} carries no sslpath metadata (model config, class names, image size), so its model "
            "cannot be rebuilt. Pass a checkpoint written by sslpath.train (a run dir's checkpoints/*.ckpt)."
        )
    config = copy.deepcopy(meta["model_config"])
    # Inference needs no optimiser, augmentation, compilation, or weights from other files.
    config.update(optimizer=None, scheduler=None, augment=None, compile=False)
    if "pretrained_ckpt" in config:
        config["pretrained_ckpt"] = None
    config["backbone"]["pretrained"] = False
    foreign = sorted(t for t in _targets(config) if t not in ALLOWED_TARGETS and not t.startswith(ALLOWED_TARGET_PREFIXES))
    if foreign or config.get("_target_") not in ALLOWED_TARGETS:
        raise UserError(
            f"refused to rebuild the model in {path}: its config names code outside sslpath's models and "
            f"backbones ({foreign or config.get('_target_')}). Only use checkpoints written by sslpath.train."
        )
    model: Classifier = instantiate(config, _convert_="all")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise UserError(f"the weights in {path} do not fit its own model config ({str(err).splitlines()[0]}).") from None
    return model.eval(), meta


# ----------------------------------------------------------------------------------------------
# Inputs


def npz_batches(path: Path, split: str, size: int, batch_size: int) -> Batches:
    """One split of a MedMNIST-format npz, resized as training resized it."""
    key = f"{split}_images"
    try:
        with np.load(path, allow_pickle=False) as npz:
            if key not in npz.files:
                raise UserError(f"{path} has no {key} (it has {sorted(npz.files)}); choose split=train|val|test.")
            images = npz[key]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise UserError(f"{path} is not a readable .npz file ({type(err).__name__}: {err}).") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(
            f"{path}: {key} is {images.dtype} {images.shape}; expected uint8 N×H×W×3 RGB tiles as in MedMNIST."
        )
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    # resize_splits is the training-time resize; its labels are unused here.
    tensor = resize_splits({split: Split(tensor, torch.zeros(len(tensor), dtype=torch.long))}, size)[split].images
    for start in range(0, len(tensor), batch_size):
        stop = min(start + batch_size, len(tensor))
        yield [f"{path.name}:{split}[{i}]" for i in range(start, stop)], tensor[start:stop]


def read_image(path: Path, size: int) -> torch.Tensor:
    """Any PIL-readable image -> uint8 3×size×size RGB (bilinear, antialiased when shrinking)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)


def image_batches(root: Path, size: int, batch_size: int, skipped: list[str]) -> Batches:
    """Images under root (or root itself); an unreadable file is reported, recorded and skipped."""
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    names: list[str] = []
    images: list[torch.Tensor] = []
    for file in files:
        try:
            images.append(read_image(file, size))
        except Exception as err:  # decoders raise many types on malformed files; one bad file must not stop the rest
            print(f"skipped {file}: {err or type(err).__name__}", file=sys.stderr, flush=True)
            skipped.append(str(file))
            continue
        names.append(file.name if file == root else str(file.relative_to(root)))
        if len(images) == batch_size:
            yield names, torch.stack(images)
            names, images = [], []
    if images:
        yield names, torch.stack(images)


# ----------------------------------------------------------------------------------------------
# Prediction


def predict(model: Classifier, batches: Batches, device: torch.device) -> tuple[list[str], np.ndarray]:
    """Names and class probabilities (N×C) for every image the batches yield."""
    model.to(device)
    names: list[str] = []
    probs: list[np.ndarray] = []
    with torch.no_grad():
        for batch_names, images in batches:
            logits = model(model.prepare(images.to(device)))
            probs.append(logits.float().softmax(dim=1).cpu().numpy())
            names += batch_names
    return names, np.concatenate(probs) if probs else np.empty((0, model.num_classes))


def write_predictions(path: Path, names: list[str], probs: np.ndarray, class_names: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "predicted", *class_names])
    for name, p in zip(names, probs):
        writer.writerow([name, class_names[int(p.argmax())]] + [f"{v:.6f}" for v in p])
    atomic_write_text(path, buf.getvalue())


def run(args: dict[str, str]) -> Path:
    source = Path(args["input"]).expanduser()
    if not source.exists():
        raise UserError(f"input={source} does not exist; pass a MedMNIST-format .npz, an image, or a folder of images.")
    device = resolve_device(args["device"])
    model, meta = load_model(args["ckpt"])
    size, batch_size = int(meta["image_size"]), int(args["batch_size"])
    skipped: list[str] = []
    if source.suffix == ".npz":
        batches = npz_batches(source, args["split"], size, batch_size)
    else:
        batches = image_batches(source, size, batch_size, skipped)
    names, probs = predict(model, batches, device)
    if not names:
        raise UserError(
            f"no readable images in {source} ({len(skipped)} unreadable). Pass a MedMNIST-format .npz or a "
            "folder of PNG/JPEG/TIFF images."
        )
    out = Path(args["out"]).expanduser()
    write_predictions(out, names, probs, meta["class_names"])
    print(
        f"sslpath.predict: {len(names)} images -> {out} ({len(skipped)} skipped; {meta.get('kind')} model "
        f"{Path(args['ckpt']).name}, {size} px, {device})"
    )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(f"usage: {USAGE}\n\n{__doc__}")
        return
    with exit_on_user_error("sslpath.predict"):
        run(parse_args(argv))


if __name__ == "__main__":
    main()
