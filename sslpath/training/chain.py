"""Chaining: a fine-tune given no SSL checkpoint pretrains one first, once per SSL settings.

The SSL stage runs in `<paths.pretrain_dir>/<method>-<key>`; the key hashes what shapes its
weights (model, data settings and the data's bytes, trainer, seed), so fine-tunes that share them
(label fractions and linear probes in a sweep, a resumed chain) reuse one pretraining, and a stage
is never reused once the data it trained on has changed. Its checkpoint is the last epoch's,
chosen without labels, and its probe sees every label: the stage is the same whichever job ran it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from sslpath.core.errors import UserError
from sslpath.core.names import path_name
from sslpath.core.paths import make_writable_dir
from sslpath.results.record import METRICS_FILE, read_record

log = logging.getLogger(__name__)

STAGE_RUN_NAME = "ssl-pretrain"  # its own report rows: a sweep may also hold model=simclr jobs


def pretrain_key(cfg: DictConfig) -> str:
    """Identity of an SSL stage: what shapes its weights (settings and the data's bytes), not where its files go."""
    stage = stage_config(cfg, Path("."))
    payload = OmegaConf.to_container(stage, resolve=True)
    payload = {key: payload[key] for key in ("model", "data", "trainer", "seed")}
    payload["trainer"].pop("default_root_dir", None)
    payload["data_digest"] = instantiate(stage.data, _convert_="all").data_digest()
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def method_name(cfg: DictConfig) -> str:
    """The SSL method of the chain's stage, e.g. "simclr" for sslpath.models.ssl.SimCLR."""
    return str(cfg.pretrain._target_).rsplit(".", 1)[-1].lower()


def stage_dir(cfg: DictConfig) -> Path:
    """Readable in TensorBoard: the method's name, then the settings key."""
    return Path(cfg.paths.pretrain_dir) / path_name(f"{method_name(cfg)}-{pretrain_key(cfg)}")


def stage_config(cfg: DictConfig, out: Path) -> DictConfig:
    """The SSL stage of a chained fine-tune: same data, trainer and seed; `pretrain` as the model."""
    stage = copy.deepcopy(cfg)
    with open_dict(stage):
        stage.model = OmegaConf.to_container(cfg.pretrain, resolve=True)  # its backbone points at model's
        stage.optimizer = stage.model.optimizer  # the stage's own (its method's preset), also where records read it
        stage.run_name = f"{STAGE_RUN_NAME}-{method_name(cfg)}"  # one report row per method
        stage.paths.output_dir = str(out)
        if not stage.model.get("joint"):
            stage.data.label_fraction = 1.0  # the detached probe's labels never reach the backbone
        stage.optimized_metric = "val/loss"
        stage.resume = None
        stage.ckpt_path = "last" if (out / "checkpoints" / "last.ckpt").is_file() else None
    keep_last_epoch(stage)
    return stage


def keep_last_epoch(cfg: DictConfig) -> None:
    """An SSL run's checkpoint is its last epoch's, not the probe's best: a label-free choice, the
    same for a chain's stage and a standalone run (see module docstring)."""
    if OmegaConf.select(cfg, "callbacks.model_checkpoint") is None:
        return
    with open_dict(cfg):
        cfg.callbacks.model_checkpoint.monitor = None
        cfg.callbacks.model_checkpoint.filename = "epoch{epoch:03d}"


def pretrained_checkpoint(cfg: DictConfig, fit_and_test: Callable[[DictConfig], dict[str, Any]]) -> str:
    """The SSL stage's checkpoint for cfg: trained now by `fit_and_test`, or reused if it exists.

    A file lock makes concurrent sweep jobs with the same key wait for one pretraining.
    """
    out = stage_dir(cfg)
    make_writable_dir(out.parent, "pretrain dir", key="paths.pretrain_dir")
    with FileLock(out.with_suffix(".lock")):
        if (out / METRICS_FILE).is_file():
            ckpt = finished_stage(out)
            log.info("reusing SSL pretraining %s (same SSL settings)", ckpt)
            return ckpt
        log.info("no model.pretrained_ckpt: pretraining SSL first in %s", out)
        return fit_and_test(stage_config(cfg, out))["ckpt_path"]


def finished_stage(out: Path) -> str:
    """The checkpoint a finished SSL stage recorded in its metrics.json (read as untrusted data)."""
    fix = f"Delete {out} to pretrain again, or pass model.pretrained_ckpt=FILE."
    ckpt = read_record(out / METRICS_FILE, fix).ckpt_path
    if ckpt is None or not Path(ckpt).is_file():
        raise UserError(f"the SSL stage {out} records the checkpoint {ckpt!r}, which is not a file. {fix}")
    return ckpt


def ssl_run_dir(metrics: dict[str, Any]) -> Path:
    """The run dir of the SSL stage a fine-tune started from (<dir>/checkpoints/<file>.ckpt)."""
    return Path(metrics["pretrained_ckpt"]).parents[1]
