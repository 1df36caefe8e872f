"""The frozen-feature evaluation SSL runs end with (sslpath.evaluation.features): features of clean images in
eval mode, a kNN and a linear probe fitted to convergence on the labelled training images, L2 chosen
on validation; recorded in metrics.json beside the online probe, for the checkpoint the run keeps
(its last epoch, chosen without labels, as the chain's stage)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslpath.evaluation.features import FrozenEvalSettings, extract, fit_linear, frozen_evaluation, linear_probe
from sslpath.models.backbones import build as build_backbone
from sslpath.models.checkpoint import load_ssl_backbone
from sslpath.training.build import build_datamodule
from sslpath.training.fit import train

from factories import compose_cfg


def blobs(n: int, seed: int, noise: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs in 4-d; class 0 holds half the points (a flat probe predicts it everywhere)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 0, 1, 2]).repeat(n // 4 + 1)[:n]
    centres = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    return centres[labels] + noise * torch.randn(n, 4, generator=gen), labels


def test_linear_probe_is_fitted_to_convergence():
    feats, labels = blobs(90, 0, noise=2.0)
    linear = fit_linear(feats, labels, 3, l2=1e-3, max_iter=1000)
    # the optimum of a convex objective: its gradient vanishes
    w, b = (p.detach().clone().requires_grad_(True) for p in (linear.weight, linear.bias))
    loss = F.cross_entropy(feats.double() @ w.T + b, labels) + 1e-3 / 2 * w.pow(2).sum()
    grad_w, grad_b = torch.autograd.grad(loss, (w, b))
    assert grad_w.abs().max() < 1e-6 and grad_b.abs().max() < 1e-6


def test_linear_probe_chooses_l2_on_validation_and_reports_test():
    train_set, val_set, test_set = blobs(60, 1), blobs(60, 2), blobs(60, 3)
    result = linear_probe(train_set, val_set, test_set, 3, [1e-4, 1e-2, 1e3], max_iter=500)
    assert result["frozen_linear_l2"] != 1e3  # that penalty flattens the probe: worse on validation
    assert result["frozen_linear_val_acc"] > 0.9 and result["frozen_linear_acc"] > 0.9
    # with a single strength the record is that probe's
    only = linear_probe(train_set, val_set, test_set, 3, [1e3], max_iter=500)
    assert only["frozen_linear_l2"] == 1e3 and only["frozen_linear_val_acc"] < result["frozen_linear_val_acc"]


def test_features_come_from_clean_images_in_eval_mode():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    backbone(torch.randn(8, 3, 6, 6))  # running statistics away from their defaults
    backbone.train()
    images = torch.randint(0, 256, (10, 3, 6, 6), dtype=torch.uint8)

    def transform(x):
        return x.float() / 255

    feats = extract(backbone, images, transform, batch_size=3)
    assert backbone.training  # restored
    backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(feats, backbone(transform(images)))
        assert not torch.allclose(feats, backbone.train()(transform(images)))  # batch statistics would differ


def test_ssl_run_records_the_frozen_evaluation_of_its_last_epoch(tmp_path):
    metrics = train(compose_cfg(tmp_path, ["model=simclr", "trainer.max_epochs=2", "data.label_fraction=0.5"]))
    # the checkpoint is the last epoch's, chosen without labels (as the chain's stage does)
    assert Path(metrics["ckpt_path"]).name == "epoch001.ckpt" and metrics["best_val_acc"] is None
    for key in ("frozen_knn_acc", "frozen_knn_val_acc", "frozen_linear_acc", "frozen_linear_val_acc"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["frozen_train_images"] == 36  # the labelled half of 72 training images
    assert "test_acc" in metrics and "val_knn_acc" in metrics  # the online probe and monitor stay beside it
    # the same numbers from the checkpoint's exported backbone, loaded afresh
    cfg = compose_cfg(tmp_path / "again", ["model=simclr", "data.label_fraction=0.5"])
    datamodule = build_datamodule(cfg)  # SSL: every training image, labels outside the fraction -1
    datamodule.setup("fit")
    backbone = build_backbone("tiny", "cifar")
    load_ssl_backbone(backbone, metrics["ckpt_path"])
    settings = FrozenEvalSettings(batch_size=int(cfg.data.eval_batch_size))
    again = frozen_evaluation(backbone, datamodule, settings)
    for key, value in again.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key


def test_supervised_runs_and_disabled_evaluation_record_none(tmp_path):
    baseline = train(compose_cfg(tmp_path / "b", ["model=baseline"]))
    assert not any(k.startswith("frozen_") for k in baseline)
    off = train(compose_cfg(tmp_path / "s", ["model=simclr", "frozen_eval.enabled=false"]))
    assert not any(k.startswith("frozen_") for k in off)
