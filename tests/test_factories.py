"""The test factories' shortcuts give what the real thing gives: `composed` (a cached composition plus plain
value overrides applied as Hydra applies them) equals Hydra's own composition, hydra node included."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from factories import TINY, composed

OVERRIDE_LISTS = [
    ("train", [*TINY, "model=baseline", "trainer.max_epochs=3", "optimizer.lr=0.01"]),
    ("train", [*TINY, "model=finetune", "data.label_fraction=0.01", "seed=3", "data.train_count=540"]),
    ("train", [*TINY, "model=simclr", "model.temperature=0.2", "run_name='a b=c'", "ckpt_path=null"]),
    ("train", [*TINY, "model=finetune", "model@pretrain=byol", "pretrain.projector_dim=32", "report=false"]),
    ("train", ["data=folder", "data.dir=/tmp/tiles", "callbacks=early_stopping", "trainer.max_epochs=2"]),
    ("train", [*TINY, "model.backbone={name: tiny, stem: cifar}", "frozen_eval.l2=[0.1,1.0]", "+foo=1"]),
    ("train", [*TINY, "experiment=robustness", "data.batch_size=8", "paths.log_dir=/tmp/x y"]),
    ("evaluate", ["ckpt=/tmp/a.ckpt", "data=synthetic", "data.test_count=36", "report=false", "seed=3"]),
    ("evaluate", ["ckpt=/tmp/a.ckpt", "encoder.name=timm/test_resnet", "~ckpt", "+extra.a=1", "extra.a=2"]),
    ("predict", ["ckpt=/tmp/a.ckpt", "input=/tmp/tiles", "batch_size=4", "split=val"]),
]


def hydra_compose(config: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        return compose(config, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(("config", "overrides"), OVERRIDE_LISTS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(OVERRIDE_LISTS)])
def test_composed_equals_hydras_composition(config, overrides):
    fast, real = composed(config, tuple(overrides), hydra=True), hydra_compose(config, overrides)
    assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(real)
    assert OmegaConf.is_struct(fast) == OmegaConf.is_struct(real)
    with open_dict(real):
        del real.hydra
    assert OmegaConf.to_yaml(composed(config, tuple(overrides))) == OmegaConf.to_yaml(real)
