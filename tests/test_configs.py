"""Every config group option composes and instantiates; bad choices fail with the valid list."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from factories import compose_cfg, run_command

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


GROUP_OPTIONS = [
    (group, option)
    for group in ("data", "model", "trainer", "logger", "callbacks", "paths", "experiment")
    for option in options(group)
] + [(f"augment@augment.{slot}", option) for slot in ("train", "ssl") for option in options("augment")]


REQUIRED = {"data=folder": ["data.dir=/tiles"], "data=stream": ["data.dir=/shards"]}  # options with a mandatory key


@pytest.mark.parametrize("group, option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_option_composes_and_resolves(tmp_path, group, option):
    choice = f"{group}={option}"
    cfg = compose_cfg(tmp_path, [choice, *REQUIRED.get(choice, [])], tiny=False)
    OmegaConf.resolve(cfg)
    file = CONF / group.split("@")[0] / f"{option}.yaml"
    own = OmegaConf.load(file)
    # the option took effect: every key its own file sets (outside `defaults`) is in the composed config
    node = cfg if "@package _global_" in file.read_text() else OmegaConf.select(cfg, group.split("@")[-1])
    for key in set(own.keys()) - {"defaults", "hydra"}:
        assert key in node, (choice, key)
    if "_target_" in own:
        assert node._target_ == own._target_


MODEL_CLASSES = {
    "baseline": "Supervised",
    "finetune": "FineTune",
    "probe": "FineTune",
    "simclr": "SimCLR",
    "ssl": "SimCLR",
    "byol": "BYOL",
    "mocov3": "MoCoV3",
    "barlowtwins": "BarlowTwins",
    "vicreg": "VICReg",
    "dino": "DINO",
}


@pytest.mark.parametrize("model", options("model"))
def test_models_instantiate(tmp_path, model):
    from sslpath.training.build import build_model

    cfg = compose_cfg(tmp_path, [f"model={model}"])
    module = build_model(cfg, num_classes=9)
    assert type(module).__name__ == MODEL_CLASSES[model] and module.head.out_features == 9
    assert getattr(module, "freeze_backbone", False) is (model == "probe")


@pytest.mark.parametrize("option", options("augment"))
def test_augment_pipelines_instantiate(tmp_path, option):
    import torch

    cfg = compose_cfg(tmp_path, [f"augment@augment.ssl={option}"])
    pipe = instantiate(cfg.augment.ssl, _convert_="all")
    out = pipe(torch.rand(4, 3, 16, 16))
    assert out.shape == (4, 3, 16, 16)


def test_unknown_option_lists_valid_choices(tmp_path):
    result = run_command("model=foo", cwd=tmp_path)
    assert result.returncode != 0
    assert "model/foo" in result.stderr and "baseline" in result.stderr and "finetune" in result.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.cli  # builds a wheel in a pip process
def test_wheel_ships_every_config_and_module(tmp_path):
    """A plain `pip install .` must find the configs outside the repo (they ship as sslpath/conf) and every
    module of every subpackage."""
    import subprocess
    import sys
    import zipfile

    repo = CONF.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(repo), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("sslpath-*.whl")
    shipped = {n.removeprefix("sslpath/conf/") for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml")}
    assert shipped == {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")}
    modules = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py") and not n.startswith("sslpath/conf/")}
    package = repo / "sslpath"
    assert modules == {
        f"sslpath/{p.relative_to(package)}" for p in package.rglob("*.py") if "conf" not in p.relative_to(package).parts
    }
