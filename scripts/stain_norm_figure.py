"""Tiles before and after stain normalisation, for docs/stain_norm/ (docs/data.md, "Stain normalisation").

    python scripts/stain_norm_figure.py ../shared/data/pathmnist_sample.npz docs/stain_norm/tiles.png

Both methods are fitted to the npz's training split, as `data.stain_norm=…` does; the rows show test tiles as
stored, normalised, then with another centre's stain (30% more haematoxylin and eosin) and normalised again.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from sslpath.data.stain import jitter_stains
from sslpath.data.stain_norm import StainNormalizer, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("npz")
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=1, help="test tiles shown per class")
    args = parser.parse_args()
    with np.load(args.npz) as npz:
        train = torch.from_numpy(npz["train_images"]).permute(0, 3, 1, 2).contiguous()
        test, labels = npz["test_images"], npz["test_labels"].ravel()
    picks = [i for c in np.unique(labels) for i in np.flatnonzero(labels == c)[: args.per_class]]
    tiles = torch.from_numpy(test[picks]).permute(0, 3, 1, 2).float() / 255
    shifted = jitter_stains(tiles, torch.tensor([1.3, 1.3, 1.0]).view(1, 3, 1, 1), torch.zeros(1, 3, 1, 1))
    norms = {m: StainNormalizer(fit(m, train, 0.1, 256)) for m in ("reinhard", "macenko")}
    rows = {
        "as stored": tiles,
        "Reinhard": norms["reinhard"](tiles),
        "Macenko": norms["macenko"](tiles),
        "other stain": shifted,
        "other, Reinhard": norms["reinhard"](shifted),
        "other, Macenko": norms["macenko"](shifted),
    }
    fig, axes = plt.subplots(len(rows), len(picks), figsize=(len(picks) * 0.9, len(rows) * 0.95))
    for r, (name, images) in enumerate(rows.items()):
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
            if r == 0:
                ax.set_title(f"class {labels[picks[c]]}", fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=150)
    print(f"{args.out}: {len(picks)} test tiles x {len(rows)} rows")


if __name__ == "__main__":
    main()
