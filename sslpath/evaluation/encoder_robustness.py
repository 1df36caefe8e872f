"""The robustness benchmark of a frozen encoder: `evaluate encoder=timm/<name> [encoder.weights=F] protocol=linear
corruptions=pathology` (or `ckpt=…` for an sslpath checkpoint's backbone). A public encoder has no classifier, so
the linear protocol's probe on all training labels (L2 chosen on val from protocol.l2) is its head; encoder and
probe are then tested under every corruption × severity as evaluate tests a checkpoint's classifier, on the
same corrupted tiles (the suite's seed), and written as robustness.json/.csv/.md/.png for robustness_report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from sslpath.data.corruptions import Suite
from sslpath.evaluation.benchmark import benchmark
from sslpath.evaluation.encoders import Encoder
from sslpath.evaluation.evaluate import predict_split
from sslpath.evaluation.feature_cache import Features
from sslpath.evaluation.features import extract, fit_probe
from sslpath.reporting.robustness import write_robustness
from sslpath.results.metrics import bootstrap_settings


def probe_robustness(
    cfg: DictConfig, encoder: Encoder, features: Features, suite: Suite, device: torch.device, out: Path, run_name: str
) -> dict[str, Any]:
    """Fit the full-label probe on the cached clean features, benchmark backbone + probe on the test tiles
    under `suite`, write the robustness files in out; returns the record (robustness.json's content)."""
    datamodule = encoder.datamodule
    probe = fit_probe(
        features["train"], features["val"], datamodule.num_classes, list(cfg.protocol.l2), int(cfg.protocol.max_iter)
    )
    backbone = encoder.backbone.to(device)
    batch = int(cfg.features.batch_size)

    def predict(images: torch.Tensor) -> torch.Tensor:
        """uint8 tiles -> the probe's logits, through the same clean-view transform the features had."""
        return probe.logits(extract(backbone, images, datamodule.transform, batch)).float()

    split = datamodule.splits["test"]
    keep = split.labels >= 0
    images, labels = split.images[keep.to(split.images.device)].cpu(), split.labels[keep].cpu()
    clean = predict_split(predict, images, batch)
    robustness = benchmark(
        suite, images, labels, list(datamodule.class_names), predict, clean, batch, device, bootstrap_settings(cfg.eval)
    )
    source = str(encoder.path) if encoder.path is not None else f"{encoder.kind} (huggingface cache)"
    return write_robustness(out, robustness, run_name, encoder.kind, f"{source} + linear probe (L2 {probe.l2:g})")
