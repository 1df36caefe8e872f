"""The frozen-feature evaluation of a randomly initialised backbone: the baseline an SSL run's `frozen_*`
keys must beat. It composes the same config as `python -m sslpath.train model=<ssl method> …`, builds the
same datamodule and (seeded) model, and runs the frozen evaluation that SSL runs end with — on the
untrained backbone, without a single optimiser step (BatchNorm keeps its initial running statistics).

    python scripts/random_init_frozen.py data.path=../shared/data/pathmnist_sample.npz model.backbone.stem=cifar

Prints one JSON record (the `frozen_*` keys of metrics.json, plus the settings that shaped them).
"""

from __future__ import annotations

import json
import sys

import lightning as L
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from sslpath.training.build import build_datamodule, build_model
from sslpath.training.fit import frozen_features


def main(overrides: list[str]) -> dict:
    """Compose `train` with `model=simclr` (any SSL model: only its backbone is evaluated) and the overrides."""
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        cfg = compose("train", overrides=["model=simclr", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = "."  # nothing is written: output_dir only has to resolve
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    model = build_model(cfg, datamodule.num_classes)
    record = frozen_features(cfg, model, datamodule)
    backbone = cfg.model.backbone
    return {"backbone": backbone.name, "stem": backbone.stem, "seed": cfg.seed, "init": "random", **record}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
