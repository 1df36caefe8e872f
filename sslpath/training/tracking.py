"""The run summary every logger gets at the end: a curated, flat set of settings linked to the
run's results, so TensorBoard's HPARAMS tab (and MLflow's run table) compare runs at a glance."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

# summary name -> config key (missing keys are left out: e.g. temperature for supervised models)
SETTINGS = {
    "model": "run_name",
    "method": "model._target_",
    "pretrain_method": "pretrain._target_",
    "backbone": "model.backbone.name",
    "stem": "model.backbone.stem",
    "optimizer": "optimizer._target_",
    "lr": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay",
    "batch_size": "data.batch_size",
    "temperature": "model.temperature",
    "label_fraction": "data.label_fraction",
    "image_size": "data.size",
    "max_epochs": "trainer.max_epochs",
    "seed": "seed",
}
RESULTS = {
    "hp/best_val_acc": "best_val_acc",
    "hp/test_acc": "test_acc",
    "hp/test_auc": "test_auc",
    "hp/val_knn_acc": "val_knn_acc",
}


def run_summary(cfg: DictConfig, metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """(settings, results) as flat scalars; class paths shortened to their class name."""
    settings: dict[str, Any] = {}
    for name, key in SETTINGS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if name in ("method", "pretrain_method", "optimizer"):
            value = str(value).rsplit(".", 1)[-1]
            if name == "pretrain_method" and "pretrained_ckpt" not in cfg.model:
                continue  # only fine-tunes have a pretraining method
        settings[name] = value
    results = {tag: float(metrics[key]) for tag, key in RESULTS.items() if metrics.get(key) is not None}
    return settings, results


def log_run_summary(loggers: list[Any], cfg: DictConfig, metrics: dict[str, Any]) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    settings, results = run_summary(cfg, metrics)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(settings, metrics=results)  # writes the HPARAMS session
        else:
            logger.log_hyperparams(settings)
            logger.log_metrics(results)
        logger.save()
