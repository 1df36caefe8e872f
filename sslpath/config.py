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


def register_resolvers() -> None:
    for name, fn in {"sslpath.auto_precision": auto_precision, "sslpath.first_set": first_set}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
