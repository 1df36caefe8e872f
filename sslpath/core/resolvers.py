"""OmegaConf resolvers used by the configs. Import-light: torch is imported only when resolved."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from sslpath.core.names import check_path_name


def auto_precision() -> str:
    """bf16 autocast where it is fast and safe (CUDA with bf16), full precision elsewhere."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def first_set(value: Any, default: Any) -> Any:
    """`value` unless it is null: `${sslpath.first_set:${resume},<new run dir>}`."""
    return default if value is None else value


def run_dir_name(run_name: Any) -> str:
    """`run_name` as the run dir's (or sweep job dir's) suffix: refused unless it is a safe path
    component (sslpath.core.names), so no run_name can place a run outside paths.log_dir."""
    return check_path_name(str(run_name), "run_name")


def pretrain_dir(log_dir: str, output_dir: str) -> str:
    """Where chained SSL stages live, beside the runs that share them, so a run placed elsewhere
    (hydra.run.dir=/x) writes nothing in the current directory:
    - a multirun: `<sweep dir>/pretrain`, shared by the sweep's jobs;
    - a run under the log dir (the default layout): `<log dir>/pretrain`, shared by all such runs;
    - a run anywhere else: `<run dir>/pretrain`.
    """
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(Path(HydraConfig.get().sweep.dir) / "pretrain")
    out, logs = Path(output_dir).absolute(), Path(log_dir).absolute()
    return str((logs if logs in out.parents else out) / "pretrain")


def config_options(group: str) -> str:
    """`a | b | c`: the options of a config group (its YAML files in conf/<group>/), for help texts that list
    them without a hand-kept copy (`${sslpath.config_options:model}`)."""
    folder = files("sslpath.conf").joinpath(*group.split("/"))
    return " | ".join(sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")))


def register_resolvers() -> None:
    resolvers = {
        "sslpath.auto_precision": auto_precision,
        "sslpath.config_options": config_options,
        "sslpath.first_set": first_set,
        "sslpath.pretrain_dir": pretrain_dir,
        "sslpath.run_dir_name": run_dir_name,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
