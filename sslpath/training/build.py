"""Instantiate a run's parts from its config: the data module, the model and the trainer.

The model node's `input` says how the data layer must prepare this model's training batches
(augmentation, number of views); `pretrained_ckpt` names weights loaded after construction. Both
are taken out before the model class is instantiated, so models stay pure.
"""

from __future__ import annotations

from typing import NamedTuple

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from sslpath.checks.schema import NOT_MODEL_ARGS
from sslpath.core.errors import UserError
from sslpath.core.names import check_class_names
from sslpath.data.datamodule import ArrayDataModule
from sslpath.models.backbones import check_input_size
from sslpath.models.base import ImageModel
from sslpath.models.checkpoint import Metadata, load_ssl_backbone
from sslpath.results.metrics import bootstrap_settings
from sslpath.training import protocol
from sslpath.training.callbacks import CheckpointMetadata, TestResults
from sslpath.training.tracking import open_mlflow


def model_class(cfg: DictConfig) -> type[ImageModel]:
    return get_class(cfg.model._target_)


def build_datamodule(cfg: DictConfig) -> ArrayDataModule:
    model_input = OmegaConf.to_container(cfg.model.input, resolve=True)
    augment = instantiate(model_input.pop("augment"), _convert_="all")
    return instantiate(
        cfg.data,
        augment=augment,
        keep_unlabelled=model_class(cfg).ssl,
        val_label_fraction=protocol.val_label_fraction(cfg),
        **model_input,
        _convert_="all",
    )


def check_label_fraction(cfg: DictConfig) -> None:
    """The fine-tune's labelled share keeps every class: read from the data before a chained SSL stage trains
    (otherwise it would be refused only after the whole stage)."""
    build_datamodule(cfg).setup("fit")


def build_model(cfg: DictConfig, num_classes: int) -> ImageModel:
    return build_started_model(cfg, num_classes)[0]


def build_started_model(cfg: DictConfig, num_classes: int) -> tuple[ImageModel, Metadata | None]:
    """The model, its backbone loaded from `pretrained_ckpt` when the node names one, and that checkpoint's
    metadata (None when it starts from scratch)."""
    node = OmegaConf.to_container(cfg.model, resolve=True)
    pretrained = node.get("pretrained_ckpt")
    check_input_size(node["backbone"]["name"], node["backbone"]["stem"], cfg.data.size)
    model = instantiate({k: v for k, v in node.items() if k not in NOT_MODEL_ARGS}, num_classes=num_classes, _convert_="all")
    return model, load_ssl_backbone(model.backbone, pretrained) if pretrained else None


def metadata(cfg: DictConfig, model: ImageModel, datamodule: ArrayDataModule, start: Metadata | None) -> Metadata:
    """What every checkpoint of the run carries (`start`: the metadata of the SSL checkpoint a fine-tune
    started from); class names a checkpoint could not carry are refused here, before training, by the rule
    its reader applies."""
    check_class_names(list(datamodule.class_names), "the data")
    return Metadata(
        kind=model.kind,
        backbone=cfg.model.backbone.name,
        stem=cfg.model.backbone.stem,
        num_classes=datamodule.num_classes,
        class_names=list(datamodule.class_names),
        image_size=int(cfg.data.size),
        mean=[float(v) for v in cfg.data.mean],
        std=[float(v) for v in cfg.data.std],
        label_fraction=float(cfg.data.label_fraction),
        seed=int(cfg.seed),
        pretrain_method=None if start is None else start.kind,
        split=datamodule.split_record(),
    )


def build_trainer(cfg: DictConfig, extra_callbacks: list[L.Callback]) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    nodes = [lg for lg in (cfg.get("logger") or {}).values() if lg is not None]
    loggers = [open_mlflow(lg) if issubclass(get_class(lg._target_), MLFlowLogger) else instantiate(lg) for lg in nodes]
    try:
        return instantiate(cfg.trainer, callbacks=[*callbacks, *extra_callbacks], logger=loggers)
    except InstantiationException as err:
        cause = str(err.__cause__ or err).strip().splitlines()[0]
        raise UserError(
            f"Lightning refused the trainer settings: {cause} Check the trainer.* overrides (e.g. "
            "trainer.precision=32-true|bf16-mixed, trainer.devices=1, trainer.accelerator=cpu|gpu|auto)."
        ) from None


class RunParts(NamedTuple):
    """Everything `trainer.fit` and `trainer.test` need, the callback that holds test results, and what
    the run's checkpoints say of it."""

    datamodule: ArrayDataModule
    model: ImageModel
    trainer: L.Trainer
    results: TestResults
    metadata: Metadata


def build_run(cfg: DictConfig) -> RunParts:
    datamodule = build_datamodule(cfg)
    model, start = build_started_model(cfg, datamodule.num_classes)
    results = TestResults(cfg.paths.output_dir, bootstrap_settings(cfg.eval), cfg.eval.ece_bins, seed=cfg.seed)
    meta = metadata(cfg, model, datamodule, start)
    # A step budget for label subsets; SSL models train on every image (and any unlabelled pool) anyway.
    budget = [protocol.StepBudget()] if cfg.budget == "steps" and not model.ssl else []
    trainer = build_trainer(cfg, [results, CheckpointMetadata(meta.to_dict()), *budget])
    return RunParts(datamodule, model, trainer, results, meta)
