"""The encoders a frozen-feature protocol tests (sslpath.evaluation.protocols): an sslpath checkpoint's exported
backbone or a public timm architecture with local weights, the data prepared for each, and their features of the
clean splits, cached (sslpath.evaluation.feature_cache) under a key of encoder, data and preprocessing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from sslpath.checks.validate import check_settings
from sslpath.core.errors import UserError
from sslpath.data.digest import file_digest, value_digest
from sslpath.evaluation import feature_cache
from sslpath.evaluation.evaluate import check_split, checkpoint_datamodule
from sslpath.evaluation.feature_cache import CacheKey, Features
from sslpath.evaluation.features import extract_splits
from sslpath.models import backbones
from sslpath.models.checkpoint import load_inference_model
from sslpath.models.encoder_weights import load_encoder

# Data settings that change how tiles are served, not which tiles or pixels: left out of the cache key.
SERVING = ("batch_size", "eval_batch_size", "on_device", "channels_last", "download", "cache_dir")


@dataclass
class Encoder:
    """The network whose features are tested, the data prepared for it, and what identifies both."""

    backbone: nn.Module
    datamodule: Any
    kind: str  # a checkpoint's model kind, or timm/<name>
    path: Path | None  # the checkpoint or weights file
    key: CacheKey


def from_checkpoint(cfg: DictConfig, ckpt: Path) -> Encoder:
    """The checkpoint's exported backbone and the data as evaluate prepares it for that checkpoint."""

    model, meta = load_inference_model(ckpt, "ckpt")
    datamodule = checkpoint_datamodule(cfg, meta, ckpt)
    datamodule.setup("test")
    for split in ("train", "val", "test"):  # every split a protocol uses holds the files the checkpoint recorded
        check_split(OmegaConf.merge(cfg, {"split": split}), datamodule, meta, ckpt)
    preprocessing = {"image_size": meta.image_size, "mean": meta.mean, "std": meta.std}
    source = {"checkpoint": str(ckpt.resolve()), "sha256": file_digest(ckpt), "backbone": meta.backbone, "stem": meta.stem}
    key = cache_key(cfg, datamodule, ckpt.stem, str(ckpt.resolve()), source, preprocessing)
    return Encoder(model.backbone, datamodule, meta.kind, ckpt, key)


def from_timm(cfg: DictConfig) -> Encoder:
    """timm's architecture with the user's safetensors weights (sslpath.models.encoder_weights) or its weights
    from the local Hugging Face cache (offline), and the data at its input size and normalisation."""

    name, weights = str(cfg.encoder.name), cfg.encoder.weights
    arch = name.removeprefix(backbones.TIMM_PREFIX)
    if not backbones.is_known(name):
        raise UserError(
            f"encoder={name} is not a model in timm's registry. Name its architecture as timm does (the encoder's model "
            "card says which), e.g. encoder=timm/vit_small_patch16_224; list them with "
            "`python -c \"import timm; print(timm.list_models('vit*'))\"`."
        )
    import timm

    size = cfg.encoder.image_size or int(timm.models.get_pretrained_cfg_value(arch, "input_size")[-1])
    if cfg.data.size not in (None, size):
        raise UserError(
            f"data.size={cfg.data.size}, but encoder={name} is tested at {size} px (encoder.image_size, or the "
            f"model's own input size). Leave data.size unset and set encoder.image_size={cfg.data.size} instead."
        )
    mean = list(cfg.encoder.mean or timm.models.get_pretrained_cfg_value(arch, "mean"))
    std = list(cfg.encoder.std or timm.models.get_pretrained_cfg_value(arch, "std"))
    if weights is not None:
        path = Path(str(weights)).expanduser()
        backbone = load_encoder(name, path, image_size=size)
        source = {"timm": name, "weights": str(path.resolve()), "sha256": file_digest(path)}
        where = str(path.resolve())
    else:
        path = None
        backbone = backbones.build(name, stem="imagenet", pretrained=True, image_size=size)  # the cache only
        source = {"timm": name, "weights": "huggingface cache", "sha256": state_digest(backbone)}
        where = f"{name} (huggingface cache)"
    with open_dict(cfg.data):
        cfg.data.size, cfg.data.mean, cfg.data.std = size, mean, std
    check_settings(cfg, "data")
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("test")
    preprocessing = {"image_size": size, "mean": mean, "std": std}
    key = cache_key(cfg, datamodule, arch if path is None else path.stem, where, source, preprocessing)
    return Encoder(backbone, datamodule, name, path, key)


def state_digest(net: nn.Module) -> str:
    """sha256 of a model's tensors (names and bytes): the identity of weights read from a cache we do not own."""

    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(
    cfg: DictConfig, datamodule: Any, name: str, where: str, source: dict[str, Any], preprocessing: dict[str, Any]
) -> CacheKey:
    """The features' identity: the encoder's and the data's bytes (or, for generated data, its settings) and
    the preprocessing; the file is named by where the encoder and data live."""

    settings = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k not in SERVING}
    place = {k: settings.get(k) for k in ("_target_", "flag", "root", "path", "dir", "unlabeled_dir") if k in settings}
    digest = datamodule.data_digest()
    data = {"target": settings["_target_"], "sha256": digest or value_digest(settings), "splits": datamodule.split_record()}
    return CacheKey(name, {"encoder": where, "data": place}, source, data, preprocessing)


def features_of(cfg: DictConfig, encoder: Encoder, device: torch.device) -> tuple[Features, bool]:
    """The encoder's features of the labelled train, val and test tiles: from the cache when its record
    matches, else extracted (clean views, eval mode) and cached. Also whether the cache was hit."""

    splits = encoder.datamodule.splits
    labels = {s: splits[s].labels[splits[s].labels >= 0].cpu() for s in feature_cache.SPLITS}
    cache_dir = None if cfg.features.cache_dir is None else Path(str(cfg.features.cache_dir)).expanduser()
    if cache_dir is not None:
        cached = feature_cache.load(cache_dir, encoder.key, labels)
        if cached is not None:
            return cached, True
    feats, found = extract_splits(encoder.backbone.to(device), encoder.datamodule, cfg.features.batch_size)
    features = {s: (feats[s], found[s]) for s in feature_cache.SPLITS}
    if not all(bool(f.isfinite().all()) for f, _ in features.values()):
        raise UserError(
            f"the encoder ({encoder.kind}) gave NaN or infinite features; nothing was written or cached. Its weights "
            "are damaged or its training diverged: use another checkpoint or weights file."
        )
    if cache_dir is not None:
        feature_cache.save(cache_dir, encoder.key, features)
    return features, False
