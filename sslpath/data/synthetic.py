"""Seeded synthetic tiles for tests and dry runs; never used in place of missing real data.

Tiles are drawn in chunks of at most `chunk_bytes` of float64 intermediates, so the peak memory is
the uint8 result plus one chunk's work, whatever the counts (PathMNIST's full shape: ~0.3 GB, not
the ~6.6 GB whole-split float64 arrays took). Chunking changes no value: the per-tile parameters of
a split are drawn first, then its pixel noise chunk by chunk from the same generator, which yields
the same numbers as one draw of the whole split's noise.
"""

from __future__ import annotations

import numpy as np
import torch

from sslpath.data.digest import file_digest
from sslpath.data.splits import SPLITS, Split

CHUNK_BYTES = 64 << 20  # float64 work per chunk: bounds the peak beyond the uint8 result
PARAM_BYTES = 16 * 8  # per tile: its label, angle, frequency, phase, hue, colour and their temporaries
FLOAT_ARRAYS = 3  # float64 arrays of chunk×3×size² alive at once: image, noise, and the stripes' smaller ones


def generator_digest() -> str:
    """sha256 of this module's source: what a cache of generated tiles was made by."""
    return file_digest(__file__)


def chunk_tiles(size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Tiles per chunk: as many as keep the float64 work within chunk_bytes (at least one)."""
    return max(1, chunk_bytes // (FLOAT_ARRAYS * 8 * 3 * size * size))


def synthetic_bytes(size: int, counts: dict[str, int], chunk_bytes: int = CHUNK_BYTES) -> float:
    """Peak bytes of drawing these splits: the uint8 tiles and labels, plus one chunk's float64 work."""
    n = sum(counts.values())
    per_tile = 3.0 * size * size
    work = FLOAT_ARRAYS * 8 * per_tile * min(max(counts.values(), default=0), chunk_tiles(size, chunk_bytes))
    return n * (per_tile + PARAM_BYTES) + work


def synthetic_splits(
    size: int, num_classes: int, counts: dict[str, int], seed: int, chunk_bytes: int = CHUNK_BYTES
) -> dict[str, Split]:
    """Seeded tiles whose class sets hue, stripe frequency and stripe angle: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    step = chunk_tiles(size, chunk_bytes)
    splits = {}
    for split in SPLITS:
        n = counts[split]
        labels = np.arange(n) % num_classes
        rng.shuffle(labels)
        angle = np.pi * labels / num_classes + rng.normal(0, 0.15, n)
        freq = 2.0 + 3.0 * (labels % 3) + rng.normal(0, 0.3, n)
        phase = rng.uniform(0, 2 * np.pi, n)
        hue = 2 * np.pi * labels / num_classes
        colour = 0.5 + 0.35 * np.stack([np.cos(hue + k * 2 * np.pi / 3) for k in range(3)], axis=1)
        images = np.empty((n, 3, size, size), dtype=np.uint8)
        for start in range(0, n, step):
            c = slice(start, start + step)
            proj = np.cos(angle[c])[:, None, None] * xx + np.sin(angle[c])[:, None, None] * yy
            stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq[c, None, None] * proj + phase[c, None, None])
            img = colour[c, :, None, None] * (0.55 + 0.45 * stripes[:, None])
            img += rng.normal(0, 0.06, img.shape)
            img *= 255  # in place, as the clip below: no third chunk-sized array
            images[c] = np.clip(img, 0, 255, out=img)
        splits[split] = Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))
    return splits
