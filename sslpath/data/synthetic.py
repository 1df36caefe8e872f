"""Seeded synthetic tiles for tests and dry runs; never used in place of missing real data."""

from __future__ import annotations

import numpy as np
import torch

from sslpath.data.splits import SPLITS, Split


def synthetic_splits(size: int, num_classes: int, counts: dict[str, int], seed: int) -> dict[str, Split]:
    """Seeded tiles whose class sets hue, stripe frequency and stripe angle: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    splits = {}
    for split in SPLITS:
        n = counts[split]
        labels = np.arange(n) % num_classes
        rng.shuffle(labels)
        angle = np.pi * labels / num_classes + rng.normal(0, 0.15, n)
        freq = 2.0 + 3.0 * (labels % 3) + rng.normal(0, 0.3, n)
        phase = rng.uniform(0, 2 * np.pi, n)
        proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])
        hue = 2 * np.pi * labels / num_classes
        colour = 0.5 + 0.35 * np.stack([np.cos(hue + k * 2 * np.pi / 3) for k in range(3)], axis=1)
        img = colour[:, :, None, None] * (0.55 + 0.45 * stripes[:, None])
        img += rng.normal(0, 0.06, img.shape)
        images = np.clip(img * 255, 0, 255).astype(np.uint8)
        splits[split] = Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))
    return splits
