"""How strongly each corruption of conf/corruptions/pathology.yaml changes tiles, per severity, next to
MedMNIST-C's own operations at their published PathMNIST parameters on the same tiles.

Writes docs/robustness/corruption_strength.md (or --out): the mean absolute pixel change from the clean
tile (grey levels of 255, over all pixels and channels) per corruption and severity, for sslpath and for
MedMNIST-C's code run at the tile's size (tests/medmnistc_reference.py: Pillow, scikit-image, OpenCV's disk
and ImageMagick's motion blur written out), and the change between consecutive severities. Random draws
(noise, motion angle, stain-shift signs) are sslpath's, handed to both. Needs the dev dependencies
(scikit-image, SciPy).

    python scripts/corruption_strength.py --npz ../shared/data/pathmnist_sample.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the reference operations live beside the tests that check them

import medmnistc_reference as reference  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from sslpath.data.corruptions import MAX_SEVERITY, load_suite  # noqa: E402

# What the MedMNIST-C column runs where MedMNIST-C's PathMNIST set has no such corruption.
REFERENCE_PARAMS = {
    **reference.PATHMNIST,
    "gaussian_noise": reference.GAUSSIAN_NOISE_DERMAMNIST,  # its DermaMNIST (RGB) values
    "stain_shift": [0.05, 0.1, 0.15, 0.2, 0.25],  # Tellez et al.'s HED jitter at these ranges (random α, β)
}


def fmt(param) -> str:
    return str(list(param)) if isinstance(param, (tuple, list)) else str(param)


def mean_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def reference_images(name: str, images: np.ndarray, param, draws: torch.Tensor | None, rng: np.random.Generator) -> np.ndarray:
    if name == "stain_shift":  # the augmenter the severities are calibrated against: α, β drawn in ±range
        return np.stack(
            [reference.hed_jitter(im, 1 + rng.uniform(-param, param, 3), rng.uniform(-param, param, 3)) for im in images]
        )
    per_image = [None] * len(images) if draws is None else draws.numpy()
    if name == "gaussian_noise":
        per_image = draws.permute(0, 2, 3, 1).numpy()
    return np.stack([reference.apply(name, im, param, d) for im, d in zip(images, per_image, strict=True)])


def table(npz: Path, split: str) -> str:
    suite = load_suite(OmegaConf.load(REPO / "conf" / "corruptions" / "pathology.yaml"))
    with np.load(npz) as data:
        images = data[f"{split}_images"]
    tiles = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    rng = np.random.default_rng(0)
    rows = [
        "| corruption | severity | sslpath parameter | sslpath change | step | MedMNIST-C parameter | MedMNIST-C change | step |",
        "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for name in suite.names:
        draws = suite.draws(name, tiles)
        ours_prev, theirs_prev = images, images
        for severity in range(1, MAX_SEVERITY + 1):
            ours = suite.apply(name, tiles, severity, draws).permute(0, 2, 3, 1).numpy()
            param = REFERENCE_PARAMS[name][severity - 1]
            theirs = reference_images(name, images, param, draws, rng)
            steps = [f"{mean_change(a, b):.2f}" if severity > 1 else "" for a, b in ((ours, ours_prev), (theirs, theirs_prev))]
            rows.append(
                f"| {name} | {severity} | {fmt(suite.param(name, severity))} | {mean_change(ours, images):.2f} | {steps[0]} "
                f"| {fmt(param)} | {mean_change(theirs, images):.2f} | {steps[1]} |"
            )
            ours_prev, theirs_prev = ours, theirs
    return "\n".join(rows)


PAGE = """# Corruption strength per severity (PathMNIST sample, {n} {split} tiles, 28 px)

Mean absolute pixel change from the clean tile, in grey levels of 255 (all pixels and channels), for each
corruption of `conf/corruptions/pathology.yaml` at each severity; **step** is the mean change between a
severity's tiles and the previous severity's. "MedMNIST-C" runs MedMNIST-C's own operations
(`tests/medmnistc_reference.py`) at its published PathMNIST parameters on the same tiles, at the tiles'
size, as its code applies them to the image it is given (its published results are for 224 px tiles
only). Gaussian noise is not in its PathMNIST set: its DermaMNIST values. Stain shift is not in MedMNIST-C:
that column is Tellez et al.'s HED augmenter at ranges 0.05 (HED-light) … 0.25 with random α, β, which the
fixed-magnitude stain shift is calibrated against (conf/corruptions/pathology.yaml says how); its step
compares independent draws, so it is large by construction. Other random draws are sslpath's, handed to both.

Where the parameters differ (motion blur severities 2-4, pixelate severity 4), MedMNIST-C's own settings
repeat a severity on 28 px tiles: its motion blur (10, 5) and (15, 5) are one kernel to 2e-5, and its
pixelate 0.30 (8 px) changes tiles no less than 0.25 (7 px). Everywhere else sslpath's operation equals
MedMNIST-C's to the grey level (`tests/test_corruptions.py`), so the two columns agree.

Produced by:

```bash
python scripts/corruption_strength.py --npz {npz_arg} --split {split}
```

{table}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, required=True, help="a PathMNIST-style npz (e.g. the shared sample)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "robustness" / "corruption_strength.md")
    args = parser.parse_args()
    with np.load(args.npz) as data:
        n = len(data[f"{args.split}_images"])
    page = PAGE.format(n=n, split=args.split, npz_arg=args.npz, table=table(args.npz, args.split))
    args.out.write_text(page)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
