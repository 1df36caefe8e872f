"""OmegaConf resolvers used by the configs. Import-light: torch is imported only when resolved."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def auto_precision() -> str:
    """bf16 autocast where it is fast and safe (CUDA with bf16), full precision elsewhere."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def first_set(value: Any, default: Any) -> Any:
    """`value` unless it is null: `${sslpath.first_set:${resume},<new run dir>}`."""
    return default if value is None else value


def pretrain_dir(log_dir: str, output_dir: str) -> str:
    """Where chained SSL stages live, beside the runs that share them, so a run placed elsewhere
    (hydra.run.dir=/x) writes nothing in the current directory:
    - a multirun: `<sweep dir>/pretrain`, shared by the sweep's jobs;
    - a run under the log dir (the default layout): `<log dir>/pretrain`, shared by all such runs;
    - a run anywhere else: `<run dir>/pretrain`.
    """
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(Path(HydraConfig.get().sweep.dir) / "pretrain")
    out, logs = Path(output_dir).absolute(), Path(log_dir).absolute()
    return str((logs if logs in out.parents else out) / "pretrain")


def register_resolvers() -> None:
    resolvers = {"sslpath.auto_precision": auto_precision, "sslpath.first_set": first_set, "sslpath.pretrain_dir": pretrain_dir}
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
