"""Frozen features cached on disk, so the protocols (sslpath.evaluation.protocols) extract them once.

A cache file is a safetensors file of plain tensors (features and labels of train, val and test) under
`features.cache_dir`. Its name comes from *where* the inputs live (the checkpoint's or weights' path, the
data's location); its metadata records *what* they were (the sha256 of the checkpoint or weights file, the
data's digest, the preprocessing: image size, mean, std, stem). A file whose record differs from the current
inputs (a retrained checkpoint at the same path, an edited npz, another image size) is never used: the
difference is named and the features are extracted again, replacing it. The file is untrusted like any other:
read as safetensors (never unpickled), every tensor's dtype, shape and values checked, the labels compared
with the data's own; anything off is named and recomputed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslpath.core.errors import UserError
from sslpath.core.files import atomic_write_bytes
from sslpath.core.names import path_name
from sslpath.data.digest import value_digest
from sslpath.models.encoder_weights import read_safetensors

log = logging.getLogger(__name__)

FORMAT = 1  # of the cache's record; another format is recomputed
SPLITS = ("train", "val", "test")
RECORD = "sslpath_feature_cache"  # the safetensors metadata key holding the record (JSON)
PARTS = {"source": "the encoder (checkpoint or weights file)", "data": "the data", "preprocessing": "the preprocessing"}

Features = dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (N×D float32 features, N int64 labels)


@dataclass(frozen=True)
class CacheKey:
    """Where the inputs live (names the file) and what they are (must match the file's record)."""

    name: str  # readable part of the file name, e.g. the checkpoint's stem
    location: dict[str, Any]  # paths: the checkpoint or weights, the data
    source: dict[str, Any]  # e.g. {"checkpoint": path, "sha256": …}
    data: dict[str, Any]  # e.g. {"target": …, "sha256": …}
    preprocessing: dict[str, Any]  # image size, mean, std, stem

    def record(self) -> dict[str, Any]:
        return {"format": FORMAT, "source": self.source, "data": self.data, "preprocessing": self.preprocessing}

    def file(self, cache_dir: Path) -> Path:
        return cache_dir / f"{path_name(self.name)}-{value_digest(self.location)[:16]}.safetensors"


def differences(stored: Any, key: CacheKey) -> list[str]:
    """What changed between a cache file's record and the current inputs, in words."""
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        return [f"it was written in another format (sslpath's cache format is {FORMAT})"]
    current = key.record()
    changed = []
    for part, what in PARTS.items():
        old, new = stored.get(part), current[part]
        if old != new:
            keys = sorted(k for k in set(old if isinstance(old, dict) else {}) | set(new) if (old or {}).get(k) != new.get(k))
            shown = "; ".join(f"{k} {_short((old or {}).get(k))} -> {_short(new.get(k))}" for k in keys[:4])
            changed.append(f"{what} changed ({shown})")
    return changed


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text[:14] + "…" if len(text) > 40 else text


def load(cache_dir: Path, key: CacheKey, labels: dict[str, torch.Tensor]) -> Features | None:
    """The cached features of these inputs, or None (with the reason logged) when they must be extracted."""
    path = key.file(cache_dir)
    if not path.is_file():
        log.info("no cached features at %s: extracting them once", path)
        return None
    try:
        stored, tensors = _read(path)
    except (OSError, ValueError, RuntimeError) as err:
        log.warning("feature cache %s is unreadable (%s): extracting the features again and replacing it", path, err)
        return None
    changed = differences(stored, key)
    if changed:
        log.warning(
            "feature cache %s was made from other inputs than this call's: %s. Extracting the features again and "
            "replacing it (features of a changed input are never reused).",
            path,
            "; ".join(changed),
        )
        return None
    problem = _check(tensors, labels)
    if problem:
        log.warning("feature cache %s %s: extracting the features again and replacing it", path, problem)
        return None
    log.info("features read from cache %s", path)
    return {s: (tensors[f"{s}_features"], tensors[f"{s}_labels"]) for s in SPLITS}


def _read(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except SafetensorError as err:
        raise ValueError(str(err).splitlines()[0][:200]) from None
    try:
        stored = json.loads(meta.get(RECORD, "null"))
    except json.JSONDecodeError:
        raise ValueError("its record is not JSON") from None
    try:
        tensors = read_safetensors(path, "feature cache")  # the same checked reader as encoder weights
    except UserError as err:
        raise ValueError(str(err)[:200]) from None
    return stored, tensors


def _check(tensors: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> str | None:
    """The problem with a cache file's tensors, or None: exactly the expected keys, float32 N×D features with
    one width and finite values, int64 labels equal to the data's."""
    expected = {f"{s}_{kind}" for s in SPLITS for kind in ("features", "labels")}
    if set(tensors) != expected:
        return f"holds tensors {sorted(tensors)}, not {sorted(expected)}"
    widths = set()
    for s in SPLITS:
        feats, stored = tensors[f"{s}_features"], tensors[f"{s}_labels"]
        if feats.dtype != torch.float32 or feats.ndim != 2 or not bool(feats.isfinite().all()):
            return f"has {s} features that are not finite float32 N×D values"
        if stored.dtype != torch.int64 or not torch.equal(stored, labels[s]):
            return f"has {s} labels that differ from the data's"
        if len(feats) != len(stored):
            return f"has {s} features of another count than its labels"
        widths.add(feats.shape[1])
    return None if len(widths) == 1 else "has features of different widths"


def save(cache_dir: Path, key: CacheKey, features: Features) -> Path:
    """Write the cache file atomically (a crash leaves the old file or none, never half of one)."""
    import safetensors.torch as st

    tensors = {}
    for s in SPLITS:
        tensors[f"{s}_features"] = features[s][0].float().contiguous()
        tensors[f"{s}_labels"] = features[s][1].long().contiguous()
    path = key.file(cache_dir)
    atomic_write_bytes(path, st.save(tensors, metadata={RECORD: json.dumps(key.record(), sort_keys=True)}))
    log.info("features cached at %s", path)
    return path
