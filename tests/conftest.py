"""Shared test fixtures: tiny synthetic runs composed from the real configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# Small enough for 2 CPU cores: 16 px synthetic tiles, a handful of batches, one epoch, and a
# few-thousand-parameter CNN. Real-size ResNet-18 runs live in the `slow` tier.
TINY_DATA = [
    "data=synthetic",
    "data.size=16",
    "data.train_count=72",
    "data.val_count=36",
    "data.test_count=36",
    "data.batch_size=24",
]
TINY_TRAINER = [
    "model.backbone.name=tiny",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "+trainer.enable_model_summary=false",
    "callbacks.progress_bar.refresh_rate=0",
]
TINY = TINY_DATA + TINY_TRAINER

SAMPLE = os.environ.get("SSLPATH_SAMPLE_NPZ")


def compose_cfg(out_dir: Path, overrides: list[str] = (), tiny: bool = True) -> DictConfig:
    """Compose conf/train.yaml as `python -m sslpath.train` would, with its run dir at out_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        base = [*(TINY if tiny else []), f"paths.log_dir={out_dir}/logs"]
        cfg = compose("train", overrides=[*base, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: unbuffered, with tests/helpers.py importable for `+callbacks`."""
    tests = str(Path(__file__).parent)
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
    }


def run_cli(*args: str, cwd: Path, timeout: float = 600, module: str = "sslpath.train") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def sample_npz() -> Path:
    if not SAMPLE or not Path(SAMPLE).is_file():
        pytest.skip("set SSLPATH_SAMPLE_NPZ to ../shared/data/pathmnist_sample.npz to run real-data tests")
    return Path(SAMPLE)
