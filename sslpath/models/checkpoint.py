"""Checkpoints read as untrusted data: tensors and plain values only, never code.

Every checkpoint a user names (ckpt_path, resume, model.pretrained_ckpt, evaluate/predict's ckpt)
passes through `load_checkpoint` before Lightning sees it. Inference models are rebuilt from a
closed, typed schema of the checkpoint's metadata (`Metadata`), never by instantiating config
stored in the file.
"""

from __future__ import annotations

import collections
import math
import pickle
import reprlib
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslpath.core.errors import UserError
from sslpath.core.names import MAX_CLASS_NAME, class_name_problem
from sslpath.data.digest import is_digest
from sslpath.data.splits import SPLITS
from sslpath.data.stain_norm import RECORD_HELP, record_problem
from sslpath.models import backbones, registry

# Lightning checkpoints hold MultiStepLR's `milestones`, a Counter: plain data, safe to allow.
torch.serialization.add_safe_globals([collections.Counter])

FORMAT = 3  # version of the metadata schema below
MAX_DEPTH = 4  # the schema nests a list in a dict; deeper metadata is refused before it can exhaust the stack
# Normalisation a real data set can have: a smaller std or a larger mean would blow inputs up to inf/NaN.
MIN_STD, MAX_STD, MAX_ABS_MEAN = 1e-3, 1e3, 10.0
SHOWN_KEYS = 3  # weight names a mismatch message lists per kind
# Metadata.split: the seed and fractions of a folder's split (null for given train/ val/ test/ folders), and
# per split the sha256 of its files' relative paths and bytes, so evaluate can re-split identically or refuse.
SPLIT_SETTINGS = ("seed", "val_fraction", "test_fraction")
SPLIT_KEYS = (*SPLIT_SETTINGS, *SPLITS)


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """torch.load with weights_only=True: a checkpoint that needs arbitrary unpickling is refused.

    `what` names the setting that gave the path (e.g. "ckpt_path"), so the message points at it.
    """
    path = Path(path).expanduser()
    try:
        found = path.is_file()
    except OSError as err:  # a name past the file-name limit, a symlink loop: no file can be there
        raise UserError(f"{what}: {str(path)[:200]} is not a usable path ({err.strerror}). Check the path.") from None
    if not found:
        raise UserError(f"{what}: checkpoint not found: {path}. Check the path (run dirs keep them in checkpoints/).")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; torch.load would try anything else as a bare pickle
        raise _unreadable(what, path, "not a zip archive")
    _check_crcs(path, what)  # torch.load does not check them: flipped bits would load as silently wrong weights
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = reason.split(". ")[0]  # torch goes on to suggest allowing globals: never do that for a stranger's file
        raise UserError(
            f"{what}: refused to load {path}: it needs code to unpickle, which a weights-only load does not run "
            f"({reason}). Only load checkpoints written by sslpath or from a source you trust."
        ) from None
    except Exception as err:  # torch raises RuntimeError, OSError, KeyError, EOFError… for non-checkpoints
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise _unreadable(what, path, f"{type(err).__name__}: {first}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{what}: {path} is not a Lightning checkpoint (no state_dict); pass a .ckpt written by sslpath.train.")
    _check_state_dict(ckpt["state_dict"], what, path)
    return ckpt


def _check_crcs(path: Path, what: str) -> None:
    """Every member's CRC-32, read through once: a bit-rotted or edited file is refused, not loaded."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except Exception as err:  # BadZipFile, OSError, EOFError, NotImplementedError (unknown compression)…
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise _unreadable(what, path, f"{type(err).__name__}: {first}") from None
    if bad is not None:
        raise UserError(
            f"{what}: {path} is corrupt: the checksum of its member {bad!r} does not match its bytes (disk or "
            "transfer damage, or an edited file). Copy the checkpoint again from its source or retrain; a damaged "
            "checkpoint would give silently wrong predictions."
        )


def _check_state_dict(state: dict[Any, Any], what: str, path: Path) -> None:
    """String keys only, and finite numbers in every floating-point tensor."""
    odd = [k for k in state if not isinstance(k, str)]
    if odd:
        raise UserError(
            f"{what}: refused {path}: its state_dict has non-string key(s) {reprlib.repr(odd)}; a checkpoint "
            "written by sslpath.train names every tensor by a string. The file was written by something else or "
            "edited: pass a .ckpt written by sslpath.train."
        )
    _check_stored(state, what, path)
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            if not bool(torch.isfinite(value).all()):
                raise UserError(
                    f"{what}: refused {path}: its weight {key!r} holds NaN or infinite values, so every output "
                    "would be meaningless. The checkpoint is corrupt, or its training run diverged (lower "
                    "optimizer.lr, or use an earlier checkpoint of the run)."
                )


def _check_stored(state: dict[str, Any], what: str, path: Path) -> None:
    """The tensors hold no more values than the file stores. torch.save writes each weight's own values;
    a crafted file can view one stored value as a tensor of any size (stride 0), so a tiny file could
    claim the weights of a huge model. Tied weights (one tensor under two names) count once."""
    tensors = {
        (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride()): t
        for t in state.values()
        if isinstance(t, torch.Tensor)
    }
    claimed = sum(t.numel() * t.element_size() for t in tensors.values())
    stored = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors.values()}.values())
    if claimed > stored:
        raise UserError(
            f"{what}: refused {path}: its weights claim {claimed:,} bytes of values but the file stores {stored:,}: "
            "some tensors repeat stored values (views), which torch.save never writes for a model's weights. The "
            "file was crafted or edited: pass a .ckpt written by sslpath.train."
        )


def _unreadable(what: str, path: Path, reason: str) -> UserError:
    return UserError(
        f"{what}: {path} is not a readable PyTorch checkpoint ({reason}). It may be truncated (a run killed "
        "while saving) or not a checkpoint at all: pass a .ckpt written by sslpath.train."
    )


def check_resumable(path: str | Path, what: str, model: dict[str, str], max_epochs: int | None) -> None:
    """A checkpoint Lightning can continue from: weights, optimiser state and loop progress, of the
    same model (`kind`, `backbone`, `stem`); with `max_epochs` (a checkpoint from elsewhere, whose
    best file is not in this run dir), also epochs left to train."""
    ckpt = load_checkpoint(path, what)
    meta = read_metadata(ckpt, path)
    differ = {k: (getattr(meta, k), v) for k, v in model.items() if getattr(meta, k) != v}
    if differ:
        shown = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} here" for k, (a, b) in differ.items())
        raise UserError(
            f"{what}: {path} holds another model ({shown}). Continue it with the settings it was trained with, "
            "or start this model without a checkpoint (use model.pretrained_ckpt=… to start from SSL weights)."
        )
    missing = [k for k in ("optimizer_states", "loops", "epoch") if k not in ckpt]
    if missing:
        raise UserError(
            f"{what}: {path} cannot be resumed from: it lacks {', '.join(missing)} (a weights-only checkpoint, "
            "such as a run's best-*.ckpt). Resume from the run's checkpoints/last.ckpt, or use it as "
            "model.pretrained_ckpt / evaluate's ckpt instead."
        )
    done = epochs_trained(ckpt)
    if max_epochs is not None and done >= max_epochs:
        raise UserError(
            f"{what}: {path} has already trained {done} epoch(s) and trainer.max_epochs={max_epochs}: nothing left to "
            f"train. Raise trainer.max_epochs to continue it, or test it with python -m sslpath.evaluate ckpt={path}."
        )


def epochs_trained(ckpt: dict[str, Any]) -> int:
    """Epochs whose training finished (an interrupted epoch does not count), from the fit loop's record."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return int(ckpt.get("epoch", -1)) + 1


@dataclass(frozen=True)
class Metadata:
    """What a checkpoint says of its model: plain, typed values from closed sets, nothing else."""

    kind: str
    backbone: str
    stem: str
    num_classes: int
    class_names: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    # The training run's own settings, which an evaluation of the checkpoint records (not its own config's).
    label_fraction: float
    seed: int
    pretrain_method: str | None = None  # a fine-tune's: the SSL kind of the checkpoint it started from
    format: int = FORMAT
    # A tile folder's split (see SPLIT_KEYS); None for npz data, whose file fixes the split itself.
    split: dict[str, Any] | None = None
    # The fitted stain normalisation (sslpath.data.stain_norm record); None: tiles are not normalised.
    stain_norm: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _refuse(path: Path, problem: str) -> UserError:
    return UserError(
        f"refused {path}: its sslpath metadata {problem}. A checkpoint written by sslpath.train holds only "
        "plain values of a fixed schema; this file was written by something else or edited. Only use "
        "checkpoints from sslpath.train or a source you trust."
    )


def _no_code(node: Any, path: Path, depth: int = 0) -> None:
    """No `_target_` key and no `${` interpolation anywhere, and no nesting deeper than MAX_DEPTH."""
    if isinstance(node, (dict, list, tuple)) and depth >= MAX_DEPTH:
        raise _refuse(path, f"nests values more than {MAX_DEPTH} levels deep")
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                raise _refuse(path, "names code to instantiate (_target_)")
            _no_code(key, path, depth + 1)
            _no_code(value, path, depth + 1)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _no_code(value, path, depth + 1)
    elif isinstance(node, str) and "${" in node:
        raise _refuse(path, "holds a config interpolation (${…})")


def read_metadata(ckpt: dict[str, Any], path: str | Path) -> Metadata:
    """Validate the checkpoint's `sslpath` entry against `Metadata`; anything off is refused."""
    path = Path(path)
    meta = ckpt.get("sslpath")
    if not isinstance(meta, dict):
        raise UserError(
            f"{path} carries no sslpath metadata, so its model cannot be rebuilt. Pass a checkpoint written by "
            "sslpath.train (a run dir's checkpoints/*.ckpt)."
        )
    _no_code(meta, path)
    names = {f.name for f in fields(Metadata)}
    unknown = sorted(set(map(str, meta)) - names)
    if unknown:
        raise _refuse(path, f"has unknown keys {reprlib.repr(unknown)}")
    missing = sorted(names - {"format", "split", "pretrain_method", "stain_norm"} - set(meta))
    if missing:
        raise _refuse(path, f"lacks {missing} (written by an older sslpath? retrain or re-export it)")

    def check(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            raise _refuse(path, f"has {key}={reprlib.repr(meta[key])}; allowed: {allowed}")

    def is_int(v: Any, lo: int, hi: int) -> bool:
        return type(v) is int and lo <= v <= hi

    def is_floats(v: Any, lo: float, hi: float) -> bool:
        return (
            isinstance(v, list) and len(v) == 3 and all(type(x) in (int, float) and math.isfinite(x) and lo <= x <= hi for x in v)
        )

    check(registry.class_of(meta["kind"]) is not None, "kind", ", ".join(registry.kinds()))
    check(backbones.is_known(meta["backbone"]), "backbone", backbones.NAMES_HELP)  # a registry name, never code
    check(meta["stem"] in backbones.stems_for(meta["backbone"]), "stem", ", ".join(backbones.stems_for(meta["backbone"])))
    check(is_int(meta["num_classes"], 2, 10_000), "num_classes", "an integer from 2 to 10000")
    check(
        isinstance(meta["class_names"], list)
        and len(meta["class_names"]) == meta["num_classes"]
        and all(class_name_problem(n) is None for n in meta["class_names"])
        and len(set(meta["class_names"])) == len(meta["class_names"]),
        "class_names",
        f"a list of {meta['num_classes']} distinct printable texts of 1 to {MAX_CLASS_NAME} characters",
    )
    check(is_int(meta["image_size"], 8, 1024), "image_size", "an integer from 8 to 1024")
    check(is_floats(meta["mean"], -MAX_ABS_MEAN, MAX_ABS_MEAN), "mean", f"3 numbers from {-MAX_ABS_MEAN:g} to {MAX_ABS_MEAN:g}")
    check(is_floats(meta["std"], MIN_STD, MAX_STD), "std", f"3 numbers from {MIN_STD:g} to {MAX_STD:g}")
    check(
        type(meta["label_fraction"]) in (int, float) and 0 < meta["label_fraction"] <= 1,
        "label_fraction",
        "a number in (0, 1]",
    )
    check(type(meta["seed"]) is int and abs(meta["seed"]) < 2**63, "seed", "an integer")
    check(
        meta.get("pretrain_method") is None or registry.is_ssl(meta["pretrain_method"]),
        "pretrain_method",
        f"null or an SSL kind ({', '.join(registry.ssl_kinds())})",
    )
    check(is_int(meta.get("format", FORMAT), FORMAT, FORMAT), "format", str(FORMAT))
    if "split" in meta:
        check(
            _is_split(meta["split"]),
            "split",
            f"null or {{{', '.join(SPLIT_KEYS)}}}: an int seed and fractions in (0, 1) "
            "(all null for given train/ val/ test/ folders), and a sha256 hex digest per split",
        )
    if "stain_norm" in meta:
        check(record_problem(meta["stain_norm"]) is None, "stain_norm", RECORD_HELP)
    return Metadata(**{k: meta[k] for k in names if k in meta})


def _is_split(split: Any) -> bool:
    if split is None:
        return True
    if not isinstance(split, dict) or set(split) != set(SPLIT_KEYS) or not all(is_digest(split[s]) for s in SPLITS):
        return False
    seed, fractions = split["seed"], (split["val_fraction"], split["test_fraction"])
    if seed is None:
        return fractions == (None, None)
    return (
        type(seed) is int
        and abs(seed) < 2**63
        and all(type(f) in (int, float) and 0 < f < 1 for f in fractions)
        and sum(fractions) < 1
    )


class InferenceModel(nn.Module):
    """Backbone + linear head (a classifier's head, or an SSL run's online probe)."""

    def __init__(self, meta: Metadata) -> None:
        super().__init__()
        self.backbone = backbones.build(meta.backbone, meta.stem, pretrained=False, image_size=meta.image_size)
        self.head = nn.Linear(self.backbone.out_dim, meta.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _weights(ckpt: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith(prefixes) and isinstance(v, torch.Tensor)}


def _check_fit(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path, fix: str) -> None:
    """The file's weights have the names and shapes of `expected` (a module's state_dict, also a meta-device one)."""
    problems = []
    for kind, keys in (
        ("missing", [k for k in expected if k not in state]),
        ("unexpected", [k for k in state if k not in expected]),
        (
            "wrong shape",
            [
                f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                for k, v in expected.items()
                if k in state and state[k].shape != v.shape
            ],
        ),
    ):
        if keys:
            more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
            problems.append(f"{len(keys)} {kind}: {', '.join(keys[:SHOWN_KEYS])}{more}")
    if problems:
        counts = f"the model holds {_count(expected):,} values, the file {_count(state):,}"
        raise UserError(f"the weights in {path} do not fit ({'; '.join(problems)}; {counts}). {fix}")


def _count(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state.values())


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], path: Path, fix: str) -> None:
    _check_fit(module.state_dict(), state, path, fix)
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"the weights in {path} do not fit ({' '.join(str(err).split())[:300]}). {fix}") from None


def load_inference_model(path: str | Path, what: str = "ckpt") -> tuple[InferenceModel, Metadata]:
    """The checkpoint's classifier in eval mode, built from its validated metadata."""
    path = Path(path).expanduser()
    ckpt = load_checkpoint(path, what)
    meta = read_metadata(ckpt, path)
    weights, fix = _weights(ckpt, ("backbone.", "head.")), "The file does not match its own metadata."
    # The metadata names the architecture, the file holds the weights: they are compared on a model built on
    # the meta device (no memory), so a small file naming a huge architecture is refused before it is built.
    with backbones.on_meta():
        _check_fit(InferenceModel(meta).state_dict(), weights, path, fix)
    model = InferenceModel(meta)
    _load_state(model, weights, path, fix)
    return model.eval(), meta


def load_ssl_backbone(backbone: nn.Module, path: str | Path) -> Metadata:
    """Copy an SSL checkpoint's backbone weights into `backbone`, refusing anything else; returns its metadata."""
    path = Path(path).expanduser()
    ckpt = load_checkpoint(path, "model.pretrained_ckpt")
    meta = read_metadata(ckpt, path)
    if not registry.is_ssl(meta.kind):
        raise UserError(
            f"model.pretrained_ckpt={path} is a {meta.kind} checkpoint, not an SSL one ({', '.join(registry.ssl_kinds())}). "
            "Pass a checkpoint written by an SSL model (e.g. model=simclr; its run dir's checkpoints/*.ckpt), or leave "
            "pretrained_ckpt unset to pretrain first."
        )
    state = {k.removeprefix("backbone."): v for k, v in _weights(ckpt, ("backbone.",)).items()}
    _load_state(backbone, state, path, "Use the same model.backbone settings (name, stem) as the SSL run that wrote it.")
    return meta
