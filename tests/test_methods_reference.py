"""The SSL methods against their reference code: MoCo v3's heads (facebookresearch/moco-v3), each
view's own BatchNorm batch where the reference forwards views separately, DINO's exported teacher,
the momentum schedule over the run's length, and one backbone pass per validation batch."""

from __future__ import annotations

import logging
import math

import lightning as L
import pytest
import torch
from lightly.utils.scheduler import cosine_schedule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sslpath.models import momentum as ema
from sslpath.models.checkpoint import load_checkpoint, load_ssl_backbone
from sslpath.training.fit import train

from factories import SMALL_HEADS, build, compose_cfg, fit

PER_VIEW = ["byol", "mocov3", "barlowtwins", "vicreg"]


# --------------------------------------------------------------------------------------------
# MoCo v3's heads: the official ResNet code


def reference_build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, last_bn: bool = True) -> nn.Sequential:
    """facebookresearch/moco-v3 moco/builder.py `MoCo._build_mlp`, as published (the definition under test)."""
    mlp = []
    for layer in range(num_layers):
        dim1 = input_dim if layer == 0 else mlp_dim
        dim2 = output_dim if layer == num_layers - 1 else mlp_dim
        mlp.append(nn.Linear(dim1, dim2, bias=False))
        if layer < num_layers - 1:
            mlp.append(nn.BatchNorm1d(dim2))
            mlp.append(nn.ReLU(inplace=True))
        elif last_bn:
            mlp.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*mlp)


def layers(module: nn.Module) -> list[tuple]:
    """Each leaf layer's type, widths, bias and BatchNorm affine flag."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            out.append(("Linear", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, nn.BatchNorm1d):
            out.append(("BatchNorm1d", m.num_features, m.affine))
        elif not list(m.children()):
            out.append((type(m).__name__,))
    return out


def test_mocov3_heads_are_the_official_resnet_heads(tmp_path):
    model = build(tmp_path, "mocov3")  # projector 32 -> 16, predictor 16 -> 32 -> 16 (SMALL_HEADS)
    dim_in = model.backbone.out_dim
    # MoCo_ResNet: projector = _build_mlp(2, hidden_dim, mlp_dim, dim), predictor = _build_mlp(2, dim, mlp_dim, dim, False)
    projector, predictor = reference_build_mlp(2, dim_in, 32, 16), reference_build_mlp(2, 16, 32, 16, last_bn=False)
    assert layers(model.projector) == layers(projector)
    assert layers(model.predictor) == layers(predictor)
    assert layers(model.projector)[-1] == ("BatchNorm1d", 16, False) and layers(model.predictor)[-1][0] == "Linear"
    # the same weights give the same outputs (train mode: batch statistics)
    projector.load_state_dict(model.projector.state_dict())
    predictor.load_state_dict(model.predictor.state_dict())
    x = torch.randn(6, dim_in, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.predictor(model.projector(x)), predictor(projector(x)))


# --------------------------------------------------------------------------------------------
# Per-view forward: each view its own BatchNorm batch (BYOL, MoCo v3, Barlow Twins, VICReg), one
# batch of 2N for SimCLR (google-research/simclr) and DINO (its MultiCropWrapper)


def two_views() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    v1 = torch.rand(6, 3, 16, 16, generator=gen)
    return [v1, 3 * v1 + 1]  # same images, other statistics: a shared batch normalises them differently


@pytest.mark.parametrize("method", [*PER_VIEW, "simclr"])
def test_each_view_is_normalised_by_its_own_batch_where_the_reference_does(tmp_path, method):
    model = build(tmp_path, method) if method != "simclr" else None
    if model is None:
        from sslpath.training.build import build_model

        model = build_model(compose_cfg(tmp_path, ["model=simclr"]), num_classes=9)
    model.train()
    views = two_views()
    with torch.no_grad():
        feats, z1, z2 = model.project_pair(views)
        per_view = [model.backbone(v) for v in views]
        joint = model.backbone(torch.cat(views)).chunk(2)
    assert not torch.allclose(per_view[1], joint[1], atol=1e-4)  # the hand case tells the two apart
    expected = joint if method == "simclr" else per_view
    torch.testing.assert_close(feats, torch.cat(expected))
    with torch.no_grad():
        if method == "simclr":
            expected_z = model.projector(torch.cat(expected)).chunk(2)
        else:
            expected_z = [model.projector(f) for f in expected]
    torch.testing.assert_close(z1, expected_z[0])
    torch.testing.assert_close(z2, expected_z[1])


@pytest.mark.parametrize("method", ["byol", "mocov3"])
def test_predictor_and_momentum_target_see_each_view_alone(tmp_path, method):
    model = build(tmp_path, method)
    model.train()
    views = two_views()
    with torch.no_grad():
        _, (p1, p2), (t1, t2) = model.predict_and_target(views)
        z = [model.projector(model.backbone(v)) for v in views]
        torch.testing.assert_close(p1, model.predictor(z[0]))
        torch.testing.assert_close(p2, model.predictor(z[1]))
        torch.testing.assert_close(t1, model.momentum_projector(model.momentum_backbone(views[0])))
        torch.testing.assert_close(t2, model.momentum_projector(model.momentum_backbone(views[1])))
        shared = model.momentum_projector(model.momentum_backbone(torch.cat(views))).chunk(2)
        assert not torch.allclose(t2, shared[1], atol=1e-4)


def test_dino_forwards_same_size_views_as_one_batch(tmp_path):
    model = build(tmp_path, "dino")
    model.train()
    views = two_views()
    with torch.no_grad():
        loss, feats, _ = model.ssl_step(views)
        teacher = model.backbone(torch.cat(views))  # the teacher is the exported backbone
    torch.testing.assert_close(feats, teacher)  # the probe learns from the teacher's features
    assert math.isfinite(loss.item())


# --------------------------------------------------------------------------------------------
# DINO exports its teacher


@pytest.mark.parametrize("export", ["teacher", "student"])
def test_dino_exports_the_teacher_by_default(tmp_path, export):
    heads = [f"model.{o}" for o in SMALL_HEADS["dino"]]
    overrides = ["model=dino", *heads, "report=false"] + ([] if export == "teacher" else ["model.export=student"])
    metrics = train(compose_cfg(tmp_path, overrides))
    state = load_checkpoint(metrics["ckpt_path"])["state_dict"]
    prefixes = {"teacher": ("backbone.", "online_backbone."), "student": ("momentum_backbone.", "backbone.")}
    teacher_prefix, student_prefix = prefixes[export]
    teacher = {k.removeprefix(teacher_prefix): v for k, v in state.items() if k.startswith(teacher_prefix)}
    student = {k.removeprefix(student_prefix): v for k, v in state.items() if k.startswith(student_prefix)}
    assert teacher.keys() == student.keys() and any(not torch.equal(teacher[k], student[k]) for k in teacher)
    # what fine-tunes, probes and evaluate load
    from sslpath.models.backbones import build as build_backbone

    loaded = build_backbone("tiny", "cifar")
    load_ssl_backbone(loaded, metrics["ckpt_path"])
    exported = teacher if export == "teacher" else student
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, exported[key]), key


def test_dino_teacher_export_refuses_a_joint_probe(tmp_path):
    from sslpath.core.errors import UserError

    with pytest.raises(Exception) as err:  # Hydra's instantiate wraps it; the entry points unwrap it (exit 2)
        build(tmp_path, "dino", "model.joint=true")
    cause = err.value
    while cause is not None and not isinstance(cause, UserError):
        cause = cause.__cause__
    assert cause is not None and "joint=true trains the exported backbone" in str(cause)


# --------------------------------------------------------------------------------------------
# The momentum schedule over the run's length


def test_init_share_is_the_product_of_the_reference_schedule():
    for total, start in ((1, 0.99), (2, 0.5), (3, 0.5), (40, 0.99), (40, 0.9995), (1000, 0.996)):
        product = math.prod(cosine_schedule(k, total, start, 1.0) for k in range(total))
        assert ema.init_share(total, start) == pytest.approx(product, rel=1e-12)
    # the figures: 40 optimiser steps keep 82 % (0.99) and 99 % (0.9995) of the random start
    assert ema.init_share(40, 0.99) == pytest.approx(0.82, abs=0.005)
    assert ema.init_share(40, 0.9995) == pytest.approx(0.99, abs=0.005)
    assert ema.init_share(10_000, 0.99) < 1e-20  # a paper-length run keeps nothing


def test_start_for_share_lowers_the_start_only_on_short_runs():
    for total, start in ((40, 0.99), (40, 0.9995), (3, 0.5)):
        lowered = ema.start_for_share(total, start, 1.0, 0.1)
        assert lowered < start and ema.init_share(total, lowered) == pytest.approx(0.1, rel=1e-9)
    assert ema.start_for_share(10_000, 0.99, 1.0, 0.1) == 0.99  # long enough: the paper's value
    assert ema.start_for_share(1, 0.99, 1.0, 0.1) == 0.99  # a one-step run cannot move its target


def travelled(model, start: dict[str, torch.Tensor], module: nn.Module) -> float:
    return math.sqrt(sum(float((p.detach() - start[k]).pow(2).sum()) for k, p in module.named_parameters()))


@pytest.mark.parametrize("method", ["byol", "dino"])
@pytest.mark.parametrize("limit", ["0.1", "null"])
def test_a_short_run_moves_its_target(tmp_path, method, limit):
    # AdamW at lr 0.01 so that the online network itself moves a fair way in 3 steps
    model = build(tmp_path, method, "optimizer=adamw", "optimizer.lr=0.01", f"model.momentum_max_init_share={limit}")
    start = {k: p.detach().clone() for k, p in model.online.named_parameters()}
    fit(model, steps=3)
    record = model.run_record()
    # how far the target went, against how far the network it follows went
    ratio = travelled(model, start, model.target) / travelled(model, start, model.online)
    if limit == "0.1":  # the default: m_start lowered until 10 % of the random init is left
        assert record["momentum_start"] < model.momentum_start
        assert record["target_init_share"] == pytest.approx(0.1, rel=1e-6)
        assert ratio > 0.25  # (the last of the 3 steps has m = 1: the target follows 2 of them)
    else:  # the paper's m_start: the target stays at its random init
        assert record["momentum_start"] == model.momentum_start and record["target_init_share"] > 0.97
        assert ratio < 0.05


def test_the_paper_schedule_on_a_short_run_warns(tmp_path, caplog):
    model = build(tmp_path, "dino", "model.momentum_max_init_share=null")
    with caplog.at_level(logging.WARNING, logger="sslpath.models.momentum_methods"):
        fit(model, steps=3)
    assert model.run_record()["momentum_start"] == 0.9995
    assert model.run_record()["target_init_share"] > 0.99
    assert any("still holds 100% of its random initialisation" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------
# Validation: one backbone pass per batch


def test_validation_runs_the_backbone_once_per_batch(tmp_path):
    model = build(tmp_path, "byol")
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    x = torch.rand(12, 3, 16, 16)
    trainer.validate(model, DataLoader(TensorDataset(x, torch.arange(12) % 9), batch_size=4), verbose=False)
    assert len(calls) == 3
