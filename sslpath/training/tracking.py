"""Loggers' stores and the run summary every logger gets at the end: a curated, flat set of settings
linked to the run's results, so TensorBoard's HPARAMS tab (and MLflow's run table) compare runs at a glance."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from sslpath.core.errors import UserError
from sslpath.results.record import RunRecord

SQLITE = "sqlite:///"  # MLflow's local store: sqlite:///relative/path or sqlite:////absolute/path

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
RESULTS = {  # summary tag -> RunRecord field
    "hp/best_val_acc": "best_val_acc",
    "hp/test_acc": "test_acc",
    "hp/test_auc": "test_auc",
    "hp/val_knn_acc": "val_knn_acc",
}


def run_summary(cfg: DictConfig, record: RunRecord) -> tuple[dict[str, Any], dict[str, float]]:
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
    results = {tag: float(getattr(record, key)) for tag, key in RESULTS.items() if getattr(record, key) is not None}
    return settings, results


def log_run_summary(loggers: list[Any], cfg: DictConfig, record: RunRecord) -> None:
    settings, results = run_summary(cfg, record)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(settings, metrics=results)  # writes the HPARAMS session
        else:
            logger.log_hyperparams(settings)
            logger.log_metrics(results)
        logger.save()


def open_mlflow(node: DictConfig) -> Any:
    """The MLflow logger of `node`, its store opened and its experiment and run created before training.

    Two runs creating one SQLite store at once race in MLflow's schema migration and in creating the
    experiment; a file lock beside the database makes the second wait for the first. A store that cannot
    be opened (a damaged file, a store of another MLflow version, an unreachable server) is a UserError
    here, not a traceback.
    """
    tracking_uri = node.get("tracking_uri")
    db = sqlite_file(tracking_uri)
    try:
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{db}.lock") if db is not None else contextlib.nullcontext():
            logger = instantiate(node)  # MlflowClient opens (and migrates) the store here
            _ = logger.experiment, logger.run_id  # the experiment and this run's record
    except Exception as err:  # sqlite3/SQLAlchemy/alembic/MlflowException/OSError: all mean "not usable"
        cause = err.__cause__ or err  # instantiate wraps the logger's own error
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        if db is None:
            raise UserError(
                f"could not open the MLflow tracking store logger.mlflow.tracking_uri={tracking_uri} "
                f"({type(cause).__name__}: {first}). Check that the server is up and reachable, or log locally "
                "with logger=tensorboard or logger=csv."
            ) from None
        raise UserError(
            f"could not open the MLflow store {db} ({type(cause).__name__}: {first}). It is damaged, or was written "
            f"by another MLflow version. Move it away (MLflow starts a new store there), or point "
            "logger.mlflow.tracking_uri=sqlite:///OTHER.db at another store."
        ) from None
    return logger


def sqlite_file(tracking_uri: str | None) -> Path | None:
    """The database file of a local SQLite store URI (query parameters dropped); None for other stores."""
    if not isinstance(tracking_uri, str) or not tracking_uri.startswith(SQLITE):
        return None
    return Path(tracking_uri.removeprefix(SQLITE).split("?", 1)[0])
