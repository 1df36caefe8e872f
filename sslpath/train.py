"""Hydra entrypoint: compose a run, instantiate it, fit, test the best checkpoint, write results.

    python -m sslpath.train model=baseline|ssl|finetune data=pathmnist|synthetic trainer=…

A fine-tune run without `model.pretrained_ckpt` pretrains `pretrain` (SimCLR) first in its own
run dir, `<paths.pretrain_dir>/<key>`, then fine-tunes from that run's best checkpoint. The key
hashes the SSL settings, so fine-tunes that share them (label fractions in a sweep, a resumed
chain) reuse one pretraining.
"""

from __future__ import annotations

import copy
import csv
import fcntl
import hashlib
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from sslpath.backbones import check_input_size
from sslpath.data import Split
from sslpath.errors import UserError, exit_on_user_error
from sslpath.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from sslpath.models import Classifier, FineTune
from sslpath.report import write_report

log = logging.getLogger(__name__)


def needs_pretraining(cfg: DictConfig) -> bool:
    return issubclass(get_class(cfg.model._target_), FineTune) and cfg.model.pretrained_ckpt is None


def pretrain_key(cfg: DictConfig) -> str:
    """Identity of an SSL stage: what shapes its weights, not where its files go."""
    model = OmegaConf.to_container(cfg.pretrain, resolve=True)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer.pop("default_root_dir", None)
    if not model.get("joint"):
        data.pop("label_fraction")  # a detached probe's labels never reach the backbone
    payload = json.dumps({"model": model, "data": data, "trainer": trainer, "seed": cfg.seed}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def pretrain_config(cfg: DictConfig, out: Path) -> DictConfig:
    """The SSL stage of a chained fine-tune: same data, trainer and seed; `pretrain` as the model."""
    stage = copy.deepcopy(cfg)
    with open_dict(stage):
        stage.model = OmegaConf.to_container(cfg.pretrain, resolve=True)  # its backbone points at model's
        stage.run_name = "ssl-pretrain"  # not "ssl": a sweep may also hold model=ssl jobs
        stage.paths.output_dir = str(out)
        # An interrupted stage continues where it stopped; its key guarantees the same settings.
        stage.ckpt_path = "last" if (out / "checkpoints" / "last.ckpt").is_file() else None
    return stage


def pretrained_checkpoint(cfg: DictConfig) -> str:
    """Best checkpoint of the SSL stage for cfg, trained once per key and shared by every fine-tune.

    A file lock makes concurrent sweep jobs with the same key wait for one pretraining.
    """
    out = Path(cfg.paths.pretrain_dir) / pretrain_key(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "metrics.json").is_file():
            ckpt = read_json(out / "metrics.json")["ckpt_path"]
            log.info("reusing SSL pretraining %s (same SSL settings, key %s)", ckpt, out.name)
            return ckpt
        log.info("no model.pretrained_ckpt: pretraining SSL first in %s", out)
        return fit_and_test(pretrain_config(cfg, out))["ckpt_path"]


def resolve_resume(ckpt_path: str | None, out: Path) -> str | None:
    if ckpt_path != "last":
        if ckpt_path is not None and not Path(ckpt_path).is_file():
            raise UserError(f"ckpt_path={ckpt_path} does not exist; pass a .ckpt file or ckpt_path=last.")
        return ckpt_path
    last = out / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise UserError(
            f"ckpt_path=last but {last} does not exist. Resume with the run dir of the interrupted run "
            "(hydra.run.dir=<that dir>), or start fresh without ckpt_path."
        )
    return str(last)


def check_same_run(cfg: DictConfig, out: Path) -> None:
    """Resuming with other settings would silently mix two experiments in one run dir."""
    saved_file = out / "config.yaml"
    if not saved_file.is_file():
        return
    saved, current = settings(OmegaConf.load(saved_file)), settings(cfg)
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if changed:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:8])
        raise UserError(
            f"cannot resume {out}: its settings differ from this command's ({shown}). Repeat the "
            f"interrupted run's overrides (its resolved config is {saved_file}), or start a new run."
        )


def settings(cfg: DictConfig) -> dict[str, Any]:
    """Leaf key -> value of a config, minus the keys that only say how to start (ckpt_path, resume)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, sub in node.items():
                walk(sub, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return {k: v for k, v in flat.items() if k.split(".")[0] not in ("ckpt_path", "resume")}


def optimized_metric(cfg: DictConfig) -> str:
    """The validation metric main() returns (for sweepers), checked against what the model logs.

    Runs before any training, so a typo fails at once rather than after a pretraining and a fit.
    """
    metric = cfg.optimized_metric
    model_cls = get_class(cfg.model._target_)
    if metric not in model_cls.val_metrics:
        raise UserError(
            f"optimized_metric={metric} is not a validation metric that {model_cls.__name__} logs; valid names "
            f"for this model: {', '.join(model_cls.val_metrics)}. It is the value returned to Hydra sweepers "
            "(hparams_search=optuna maximizes it; for val/loss also set hydra.sweeper.direction=minimize)."
        )
    return metric


def best_value(trainer: L.Trainer, metric: str) -> float:
    """The best value of metric if the checkpoint callback monitors it, else its last value."""
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and getattr(ckpt, "monitor", None) == metric and ckpt.best_model_score is not None:
        return float(ckpt.best_model_score)
    value = trainer.callback_metrics.get(metric)
    if value is None:
        raise UserError(
            f"optimized_metric={metric} was never logged during training (val/knn_acc needs "
            "model.knn_k > 0, and validation must run)."
        )
    return float(value)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one model; chain SSL pretraining first when a fine-tune needs it."""
    optimized_metric(cfg)
    if cfg.resume:
        with open_dict(cfg):
            cfg.ckpt_path = "last"
    if not needs_pretraining(cfg):
        return fit_and_test(cfg)
    with open_dict(cfg):
        cfg.model.pretrained_ckpt = pretrained_checkpoint(cfg)
    metrics = fit_and_test(cfg)
    if cfg.report and rank_zero_only.rank == 0:
        out = Path(cfg.paths.output_dir)
        write_report([ssl_run_dir(metrics), out], out / "report")
    return metrics


def ssl_run_dir(metrics: dict[str, Any]) -> Path:
    """The run dir of the SSL stage a fine-tune started from (<dir>/checkpoints/<file>.ckpt)."""
    return Path(metrics["pretrained_ckpt"]).parents[1]


def fit_and_test(cfg: DictConfig) -> dict[str, Any]:
    out = Path(cfg.paths.output_dir)
    resume_from = resolve_resume(cfg.ckpt_path, out)
    if cfg.ckpt_path == "last":
        check_same_run(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)
    model_cls = get_class(cfg.model._target_)
    check_input_size(cfg.model.backbone.stem, cfg.data.size)
    datamodule = instantiate(cfg.data, keep_unlabelled=model_cls.trains_on_unlabelled)
    model: Classifier = instantiate(cfg.model, _convert_="all")
    model.checkpoint_meta = {
        "model_config": OmegaConf.to_container(cfg.model, resolve=True),
        "class_names": datamodule.class_names,
        "image_size": cfg.data.size,
    }
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    metric = optimized_metric(cfg)
    value = best_value(trainer, metric)  # before test(), which replaces trainer.callback_metrics
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not best:
        raise UserError(
            "training finished without a best checkpoint (no validation ran?). Keep the "
            "model_checkpoint callback and check_val_every_n_epoch <= trainer.max_epochs."
        )
    trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
    wall = time.perf_counter() - start

    metrics = {
        "model": model.kind,
        "run_name": cfg.run_name,
        "seed": cfg.seed,
        "label_fraction": cfg.data.label_fraction,
        **model.test_results,
        "per_class_acc": dict(zip(datamodule.class_names, model.test_results["per_class_acc"])),
        "best_val_acc": float(trainer.checkpoint_callback.best_model_score),
        "optimized_metric": metric,
        "optimized_value": value,
        "ckpt_path": str(Path(best).resolve()),
        "epochs": trainer.current_epoch,
        "wall_seconds": round(wall, 2),
    }
    if isinstance(model, FineTune):
        metrics["pretrained_ckpt"] = str(Path(model.pretrained_ckpt).resolve()) if model.pretrained_ckpt else None
        metrics["freeze_backbone"] = model.freeze_backbone
    if trainer.is_global_zero:
        write_predictions(out / "test_predictions.csv", model.test_predictions, datamodule.class_names)
        write_examples(out / "test_examples.npz", datamodule.splits["test"], model.test_predictions, cfg.seed)
        atomic_write_json(out / "metrics.json", metrics)
        log.info("test_acc=%.4f test_auc=%.4f -> %s", metrics["test_acc"], metrics["test_auc"], out / "metrics.json")
    return metrics


def write_predictions(path: Path, predictions: dict[str, Any], class_names: list[str]) -> None:
    """One row per test image: index, true label, predicted label, probability per class."""
    probs, labels = predictions["probs"], predictions["labels"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["index", "label", "pred"] + [f"p_{name}" for name in class_names])
    for i, (p, y) in enumerate(zip(probs, labels)):
        writer.writerow([i, int(y), int(p.argmax())] + [f"{v:.6f}" for v in p])
    atomic_write_text(path, buf.getvalue())


def write_examples(path: Path, split: Split, predictions: dict[str, Any], seed: int, count: int = 36) -> None:
    """A seeded handful of test images with labels and predictions, for the report's image grids."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(split), generator=gen)[:count].sort().values
    buf = io.BytesIO()
    np.savez(
        buf,
        index=idx.numpy(),
        images=split.images[idx.to(split.images.device)].permute(0, 2, 3, 1).cpu().numpy(),  # N×H×W×3 RGB
        labels=split.labels[idx.to(split.labels.device)].cpu().numpy(),
        probs=predictions["probs"][idx.numpy()],
    )
    atomic_write_bytes(path, buf.getvalue())


@hydra.main(version_base="1.3", config_path="pkg://sslpath.conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the best value of `optimized_metric` (val/acc by default): the objective of sweepers."""
    with exit_on_user_error("sslpath.train"):
        try:
            return run(cfg)["optimized_value"]
        except SIGTERMException:
            print("sslpath.train: stopped by SIGTERM; last.ckpt was saved: resume with resume=RUN_DIR.", file=sys.stderr)
            raise SystemExit(143) from None


if __name__ == "__main__":
    main()
