"""A MedMNIST-format npz for streaming checks: a labelled npz's train/val/test plus N random uint8 tiles as
`unlabeled_images` (an SSL pool). `python scripts/make_pool.py SAMPLE.npz 100000 OUT.npz`; then
`python -m sslpath.prepare --npz OUT.npz --out SHARDS` puts the pool into the training split with label -1."""

from __future__ import annotations

import sys

import numpy as np


def main() -> None:
    source, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with np.load(source, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files if key.split("_")[0] in ("train", "val", "test")}
    size = arrays["train_images"].shape[1]
    arrays["unlabeled_images"] = np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    np.savez(out, **arrays)


if __name__ == "__main__":
    main()
