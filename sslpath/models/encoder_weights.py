"""Encoder weights a user brings: a timm architecture plus a local safetensors file (issue 18, item 5).

A public pathology encoder's weights are an untrusted file. They are read with the `safetensors` package
only: a header of names, dtypes and shapes, then raw numbers; nothing is unpickled, whatever the file
claims to be. A PyTorch pickle or zip (`.pt`, `.pth`, `.ckpt`, `.bin`) is refused with the one-line
conversion to run where the file is trusted. The names and shapes are checked against the architecture
built on PyTorch's `meta` device (no memory, no computation) before the real model is built and loaded,
so a wrong architecture is a list of missing and unexpected keys and shape mismatches, never a half-loaded
model. The architecture is built as published (timm's own stem, `pretrained=False`: no network).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sslpath.core.errors import UserError
from sslpath.models.backbones import TIMM_PREFIX, build

log = logging.getLogger(__name__)

MAX_HEADER = 100 * 2**20  # the safetensors format's own limit on its JSON header (100 MB)
SHOWN = 8  # keys listed per kind of problem; the rest are counted
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format since PyTorch 1.6
PICKLE_PROTOCOLS = range(2, 6)  # a pickle of protocol 2+ starts with 0x80 and its protocol number
CONVERT = (
    "python -c \"import torch, safetensors.torch as st; sd = torch.load('W.pt', map_location='cpu', "
    "weights_only=True); st.save_file(sd.get('state_dict', sd), 'W.safetensors')\""
)


def _refuse_pickle(path: Path, what: str, kind: str) -> UserError:
    return UserError(
        f"{what}={path} is {kind}, which loading could run code from; sslpath reads encoder weights only from "
        "safetensors files (plain numbers, nothing executed). Convert it once where you trust the file, e.g. "
        f"{CONVERT}, and pass the .safetensors file."
    )


def read_safetensors(path: str | Path, what: str = "encoder.weights") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU; a clear UserError for anything else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{what}={path}: no such file. Pass the path of the encoder's .safetensors weights.")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    if head.startswith(ZIP_MAGIC):
        raise _refuse_pickle(path, what, "a PyTorch zip archive (torch.save: .pt/.pth/.ckpt), holding a pickle")
    if len(head) >= 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS:
        raise _refuse_pickle(path, what, "a Python pickle (legacy torch.save or pickle.dump)")
    header = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if len(head) < 9 or header < 2 or header > min(MAX_HEADER, size - 8) or head[8:9] != b"{":
        raise UserError(
            f"{what}={path} is not a safetensors file (it does not start with a safetensors header: 8 bytes of "
            "header length, then JSON). Pass the encoder's .safetensors weights."
        )
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except (SafetensorError, OSError, ValueError, RuntimeError, json.JSONDecodeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"{what}={path} is a damaged or truncated safetensors file ({first}). Download it again.") from None


@dataclass
class Mismatch:
    """How a state dict differs from what an architecture expects."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)  # "key: file [a, b] vs model [c, d]"
    kinds: list[str] = field(default_factory=list)  # "key: file int64 vs model float32"
    non_finite: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.missing, self.unexpected, self.shapes, self.kinds, self.non_finite))

    def describe(self) -> str:
        parts = []
        for label, keys in (
            ("missing keys", self.missing),
            ("unexpected keys", self.unexpected),
            ("shape mismatches", self.shapes),
            ("dtype mismatches", self.kinds),
            ("NaN or infinite values in", self.non_finite),
        ):
            if keys:
                more = f" … and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:SHOWN])}{more}")
        return "; ".join(parts)


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def compare_state(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> Mismatch:
    """Keys, shapes and kinds (floating point or not) of `given` against `expected` (a meta-device state
    dict: shapes and dtypes only), and finite values in every floating tensor given."""
    mismatch = Mismatch(
        missing=[k for k in expected if k not in given],
        unexpected=[k for k in given if k not in expected],
    )
    for key in (k for k in expected if k in given):
        want, got = expected[key], given[key]
        if want.shape != got.shape:
            mismatch.shapes.append(f"{key}: file {_shape(got)} vs model {_shape(want)}")
        elif want.is_floating_point() != got.is_floating_point():
            mismatch.kinds.append(f"{key}: file {got.dtype} vs model {want.dtype}".replace("torch.", ""))
        elif got.is_floating_point() and not bool(torch.isfinite(got).all()):
            mismatch.non_finite.append(key)
    return mismatch


def load_encoder(arch: str, weights: str | Path, image_size: int | None = None, what: str = "encoder.weights") -> nn.Module:
    """timm's `arch` (a registry name, with or without `timm/`) as a feature extractor, its weights from a
    safetensors file checked key by key and shape by shape first. The keys of timm's classifier head
    (`fc.*`, `head.*`: its `pretrained_cfg["classifier"]`) are not part of an encoder and are skipped."""
    name = arch if arch.startswith(TIMM_PREFIX) else TIMM_PREFIX + arch
    state = read_safetensors(weights, what)
    with torch.device("meta"):
        skeleton = build(name, stem="imagenet", pretrained=False, image_size=image_size)
    expected = skeleton.state_dict()
    head = getattr(skeleton, "pretrained_cfg", {}).get("classifier")
    heads = (head,) if isinstance(head, str) else tuple(head or ())
    dropped = [k for k in state if k not in expected and any(k.startswith(f"{h}.") for h in heads)]
    if dropped:
        log.info("%s: skipped the classifier head's keys %s (an encoder has no head)", what, ", ".join(dropped))
        state = {k: v for k, v in state.items() if k not in dropped}
    mismatch = compare_state(expected, state)
    if mismatch:
        raise UserError(
            f"{what}={Path(weights).expanduser()} does not fit {name}: {mismatch.describe()}. Check that the weights "
            f"are for this architecture (the encoder's model card names it) and saved without a prefix such as "
            "'model.' or 'module.'."
        )
    net = build(name, stem="imagenet", pretrained=False, image_size=image_size)
    net.load_state_dict(state, strict=True)
    parameters = sum(math.prod(t.shape) for t in state.values())
    log.info("%s: loaded %d tensors (%s numbers) into %s", what, len(state), f"{parameters:,}", name)
    return net
