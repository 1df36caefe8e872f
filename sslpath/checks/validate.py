"""Checks of the user-facing settings, run before any data is read or any model is built.

Hydra passes command-line values through as given (`trainer.max_epochs=abc` is a string), so each
key the user may set gets its type and range checked here, with a message naming the key, the
value and what is allowed.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from sslpath.core.errors import UserError
from sslpath.data.download import check_download_setting
from sslpath.models import registry
from sslpath.models.checkpoint import MAX_ABS_MEAN, MAX_STD, MIN_STD  # what a checkpoint may carry

INT, FLOAT = "an integer", "a number"
# key -> (kind, lowest, highest, open_low): None bounds are unbounded; open_low excludes `lowest`.
RULES: dict[str, tuple[str, float | None, float | None, bool]] = {
    "seed": (INT, 0, 2**32 - 1, False),
    "data.batch_size": (INT, 1, None, False),
    "data.eval_batch_size": (INT, 1, None, False),
    "data.size": (INT, 8, 1024, False),
    "data.label_fraction": (FLOAT, 0, 1, True),
    "data.train_count": (INT, 1, None, False),
    "data.val_count": (INT, 1, None, False),
    "data.test_count": (INT, 1, None, False),
    "data.num_classes": (INT, 2, 10_000, False),
    "data.val_fraction": (FLOAT, 0, 1, True),
    "data.test_fraction": (FLOAT, 0, 1, True),
    "data.download_timeout_s": (FLOAT, 0, 3600, True),
    "trainer.max_epochs": (INT, 1, None, False),
    "trainer.check_val_every_n_epoch": (INT, 1, None, False),
    "optimizer.lr": (FLOAT, 0, None, True),
    "optimizer.weight_decay": (FLOAT, 0, None, False),
    "model.temperature": (FLOAT, 0, None, True),
    "model.knn_k": (INT, 0, None, False),
    "pretrain.temperature": (FLOAT, 0, None, True),
    "pretrain.knn_k": (INT, 0, None, False),
    # SSL methods' optimiser presets and momentum schedules (docs/methods.md)
    **{
        f"{node}.{key}": rule
        for node in ("model", "pretrain")
        for key, rule in {
            "momentum_start": (FLOAT, 0, 1, False),
            "momentum_max_init_share": (FLOAT, 0, 1, True),
            "clip_grad": (FLOAT, 0, None, True),
        }.items()
    },
    **{
        f"{node}.{key}": rule
        for node in ("optimizer", "pretrain.optimizer")
        for key, rule in {
            **({"lr": (FLOAT, 0, None, True), "weight_decay": (FLOAT, 0, None, False)} if node != "optimizer" else {}),
            "reference_batch": (INT, 1, None, False),
            "weight_decay_end": (FLOAT, 0, None, False),
            "norm_bias_lr": (FLOAT, 0, None, True),
        }.items()
    },
}


def _describe(kind: str, lo: float | None, hi: float | None, open_low: bool) -> str:
    low = "" if lo is None else (f"> {lo}" if open_low else f">= {lo}")
    high = "" if hi is None else f"<= {hi}"
    return f"{kind} {' and '.join(b for b in (low, high) if b)}".strip()


def check_value(key: str, value: Any, kind: str, lo: float | None, hi: float | None, open_low: bool) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = is_number and (kind == FLOAT or isinstance(value, int))
    if ok:
        ok = (lo is None or (value > lo if open_low else value >= lo)) and (hi is None or value <= hi)
    if not ok:
        raise UserError(
            f"{key}={value!r} is not valid: it must be {_describe(kind, lo, hi, open_low)}. Fix the override "
            f"on the command line (or in your experiment config)."
        )


def validate(cfg: DictConfig) -> None:
    """Every rule whose key the config has; raises UserError at the first bad value."""
    if not isinstance(cfg.get("pretrain"), DictConfig):
        raise UserError(
            f"pretrain={cfg.get('pretrain')!r} replaced the whole SSL stage config with a value. Choose the SSL "
            f"method of a chained fine-tune with model@pretrain=<method> ({', '.join(registry.ssl_kinds())}), and set "
            "its options with pretrain.<key>=…"
        )
    for key, rule in RULES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            check_value(key, value, *rule)
    if "download" in cfg.get("data", {}):
        check_download_setting(cfg.data.download)
    for key, lo, hi in (("data.mean", -MAX_ABS_MEAN, MAX_ABS_MEAN), ("data.std", MIN_STD, MAX_STD)):
        value = OmegaConf.select(cfg, key, default=None)
        ok = (
            isinstance(value, ListConfig)
            and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi for v in value)
        )
        if value is not None and not ok:
            allowed = f"3 numbers from {lo:g} to {hi:g}"
            raise UserError(
                f"{key}={value!r} is not valid: it must be {allowed}, one per RGB channel (e.g. {key}=[0.5,0.5,0.5])."
            )
    milestones = OmegaConf.select(cfg, "scheduler.milestones", default=None)
    if milestones is not None and not (
        isinstance(milestones, ListConfig) and all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in milestones)
    ):
        raise UserError(f"scheduler.milestones={milestones!r} is not valid: it must be a list of epoch numbers >= 0, e.g. [2,6].")
    if cfg.get("ckpt_path") not in (None, "last") and not isinstance(cfg.ckpt_path, str):
        raise UserError(f"ckpt_path={cfg.ckpt_path!r} is not valid: pass a .ckpt file, `last`, or leave it unset.")
