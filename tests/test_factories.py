"""The test factories' shortcut gives what the real thing gives: Hydra compositions through
cached_load_configuration (a cached composition of the group choices, then Hydra's own override application)
equal Hydra's own, hydra node included, by the compose API and by an in-process command."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from factories import TINY, real_composition, run_command

OVERRIDE_LISTS = [
    ("train", [*TINY, "model=baseline", "trainer.max_epochs=3", "optimizer.lr=0.01"]),
    ("train", [*TINY, "model=finetune", "data.label_fraction=0.01", "seed=3", "data.train_count=540"]),
    ("train", [*TINY, "model=simclr", "model.temperature=0.2", "run_name='a b=c'", "ckpt_path=null"]),
    ("train", [*TINY, "model=finetune", "model@pretrain=byol", "pretrain.projector_dim=32", "report=false"]),
    ("train", ["data=folder", "data.dir=/tmp/tiles", "callbacks=early_stopping", "trainer.max_epochs=2"]),
    ("train", [*TINY, "model.backbone={name: tiny, stem: cifar}", "frozen_eval.l2=[0.1,1.0]", "+foo=1"]),
    ("train", [*TINY, "experiment=robustness", "data.batch_size=8", "paths.log_dir=/tmp/x y", "hydra.run.dir=/tmp/r"]),
    ("train", [*TINY, "hydra/job_logging=disabled", "hydra.job.chdir=true", "hydra.mode=RUN"]),
    ("evaluate", ["ckpt=/tmp/a.ckpt", "data=synthetic", "data.test_count=36", "report=false", "seed=3"]),
    ("evaluate", ["ckpt=/tmp/a.ckpt", "encoder.name=timm/test_resnet", "~ckpt", "+extra.a=1", "extra.a=2"]),
    ("predict", ["ckpt=/tmp/a.ckpt", "input=/tmp/tiles", "batch_size=4", "split=val"]),
]


def hydra_compose(config: str, overrides: list[str]) -> str:
    GlobalHydra.instance().clear()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        return OmegaConf.to_yaml(compose(config, overrides=overrides, return_hydra_config=True))


@pytest.mark.parametrize(("config", "overrides"), OVERRIDE_LISTS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(OVERRIDE_LISTS)])
def test_cached_composition_equals_hydras(config, overrides):
    cached = [hydra_compose(config, overrides) for _ in range(2)]  # the second from the cache
    with real_composition():
        real = hydra_compose(config, overrides)
    assert cached == [real, real]


@pytest.mark.parametrize(
    ("overrides", "error"),
    [(["trainer.max_epoch=3"], "Could not override 'trainer.max_epoch'"), (["model=nope"], "Could not find 'model/nope'")],
)
def test_cached_composition_fails_as_hydra_does(overrides, error):
    with pytest.raises(Exception, match=error) as cached:
        hydra_compose("train", [*TINY, *overrides])
    with real_composition(), pytest.raises(Exception, match=error) as real:
        hydra_compose("train", [*TINY, *overrides])
    assert (type(cached.value), str(cached.value)) == (type(real.value), str(real.value))


def test_an_in_process_command_composes_as_hydra_does(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    args = ("--cfg", "hydra", *TINY, "model=finetune", f"paths.log_dir={tmp_path}")
    run_command(*args, "seed=5", cwd=tmp_path / "elsewhere")  # cached first with another cwd and other values
    args = (*args, "seed=4", f"hydra.run.dir={tmp_path}/r")
    cached = run_command(*args, cwd=tmp_path)
    with real_composition():
        real = run_command(*args, cwd=tmp_path)
    assert cached.returncode == real.returncode == 0 and cached.stdout == real.stdout and "seed=4" in cached.stdout


def test_each_cached_composition_resolves_the_time_anew(tmp_path):
    """Hydra's `now` resolver caches its value in the config: a copy of a cached composition must start with
    an empty cache, as a new composition does, or two runs a second apart would get one timestamped run dir
    (the README's two baseline commands did)."""
    args = ("--cfg", "job", "--package", "stamp", "--resolve", *TINY, "+stamp=${now:%f}")  # microseconds
    stamps = [run_command(*args, cwd=tmp_path).stdout.strip() for _ in range(2)]
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, "+stamp=${now:%f}"])
    assert all(stamp.isdigit() for stamp in stamps) and stamps[0] != stamps[1]
    assert not OmegaConf.get_cache(cfg).get("now"), "a new composition carries resolved times"
