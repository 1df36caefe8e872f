"""Each SSL method's optimiser preset from its paper or reference code (docs/methods.md): chosen by the
method's config and overridable, lr scaled by the global batch, LARS without adapting norms and
biases, DINO's weight-decay schedule and per-parameter gradient clipping, and BYOL's asymmetric views."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from sslpath.checks.validate import validate
from sslpath.models.optim import build_optimizer, parameter_groups, split_settings
from sslpath.training.build import build_datamodule, build_model

from factories import build, compose_cfg, fit

LARS = "lightly.utils.lars.LARS"
# method -> (optimizer class, lr at batch 256, weight decay, extra settings): the table in docs/methods.md
PAPER = {
    "simclr": (LARS, 0.3, 1e-6, {}),
    "byol": (LARS, 0.45, 1e-6, {}),
    "mocov3": (LARS, 0.6, 1e-6, {}),
    "barlowtwins": (LARS, 0.2, 1e-6, {"norm_bias_lr": 0.0048}),
    "vicreg": (LARS, 0.2, 1e-6, {}),
    "dino": ("torch.optim.AdamW", 5e-4, 0.04, {"weight_decay_end": 0.4}),
}


@pytest.mark.parametrize("method", list(PAPER))
def test_each_method_selects_its_paper_preset_and_it_can_be_overridden(tmp_path, method):
    target, lr, wd, extra = PAPER[method]
    cfg = compose_cfg(tmp_path, [f"model={method}"])
    validate(cfg)
    node = cfg.model.optimizer
    assert (node._target_, node.lr, node.weight_decay, node.reference_batch) == (target, lr, wd, 256)
    assert all(node[k] == v for k, v in extra.items())
    # the run's own optimiser is replaced with optimizer=…; a chained stage keeps its method's preset
    assert compose_cfg(tmp_path, [f"model={method}", "optimizer=adamw"]).model.optimizer._target_ == "torch.optim.AdamW"
    chained = compose_cfg(tmp_path, ["model=finetune", f"model@pretrain={method}"])
    assert chained.pretrain.optimizer._target_ == target and chained.model.optimizer._target_ == "torch.optim.AdamW"
    other = compose_cfg(tmp_path, ["model=finetune", f"model@pretrain={method}", "optimizer@pretrain.optimizer=sgd"])
    assert other.pretrain.optimizer._target_ == "torch.optim.SGD"


@pytest.mark.parametrize("accumulate", [1, 2])
def test_learning_rates_scale_with_the_global_batch(tmp_path, accumulate):
    model = build(tmp_path, "barlowtwins", "scheduler=none")
    trainer = fit(model, steps=2, batch=8, accumulate_grad_batches=accumulate)
    groups = {g["role"] if "role" in g else "probe": g for g in trainer.optimizers[0].param_groups}
    scale = 8 * accumulate / 256
    assert groups["decay"]["lr"] == pytest.approx(0.2 * scale)
    assert groups["norm_bias"]["lr"] == pytest.approx(0.0048 * scale)  # Barlow Twins' biases and norms
    assert groups["probe"]["lr"] == pytest.approx(0.2 * scale) and groups["probe"]["weight_decay"] == 0.0
    assert groups["decay"]["weight_decay"] == 1e-6 and groups["norm_bias"]["weight_decay"] == 0.0
    assert {id(p) for p in groups["probe"]["params"]} == {id(p) for p in model.head.parameters()}


def test_without_reference_batch_the_lr_is_taken_as_given(tmp_path):
    factory, settings = split_settings(build_model(compose_cfg(tmp_path, ["model=baseline"]), 9).optimizer_factory)
    optimizer = build_optimizer(factory, settings, [{"params": [nn.Parameter(torch.zeros(1))]}], global_batch=4096)
    assert settings.reference_batch is None and optimizer.param_groups[0]["lr"] == 1e-3


def test_lars_leaves_norms_and_biases_unadapted():
    """One LARS step: weights move by lr × trust · ‖w‖ / ‖g‖ × g (layer-wise adaptation), norm
    weights and biases (no weight decay) by plain lr × g, as BYOL, SimCLR and MoCo v3 exclude them."""
    from lightly.utils.lars import LARS

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    net(torch.randn(5, 4)).pow(2).sum().backward()
    before = {k: p.detach().clone() for k, p in net.named_parameters()}
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    LARS(parameter_groups(net, no_decay_norm_bias=True), lr=0.5, momentum=0.9, weight_decay=1e-6).step()
    after = dict(net.named_parameters())
    for key in ("0.bias", "1.weight", "1.bias"):
        torch.testing.assert_close(after[key].detach(), before[key] - 0.5 * grads[key])
    w, g = before["0.weight"], grads["0.weight"] + 1e-6 * before["0.weight"]
    trust = 0.001 * w.norm() / (grads["0.weight"].norm() + 1e-6 * w.norm() + 1e-8)
    torch.testing.assert_close(after["0.weight"].detach(), w - 0.5 * trust * g)


def test_dino_weight_decay_follows_its_cosine_schedule(tmp_path):
    class RecordWeightDecay(L.Callback):
        def __init__(self) -> None:
            self.seen: list[dict[str, float]] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.seen.append({g.get("role", "probe"): g["weight_decay"] for g in optimizer.param_groups})

    record = RecordWeightDecay()
    fit(build(tmp_path, "dino", "scheduler=none"), steps=4, callbacks=[record])
    expected = [cosine_schedule(k, 4, 0.04, 0.4) for k in range(4)]  # 0.04 → 0.4 over the run, per step
    assert [s["decay"] for s in record.seen] == pytest.approx(expected)
    assert all(s["norm_bias"] == 0.0 and s["probe"] == 0.0 for s in record.seen)


def reference_clip_gradients(model: nn.Module, clip: float) -> None:
    """facebookresearch/dino utils.clip_gradients, as published: each parameter's norm on its own."""
    for p in model.parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)


def test_dino_clips_each_parameter_gradient_as_the_reference(tmp_path):
    model = build(tmp_path, "dino")
    assert model.clip_grad == 3.0
    gen = torch.Generator().manual_seed(3)
    student = [*model.online.parameters(), *model.projector.parameters()]
    for i, p in enumerate(student):
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=gen) * (0.01 if i % 2 else 100.0)  # some under 3.0, some far over
    expected = nn.ParameterList([nn.Parameter(p.detach().clone()) for p in student])
    for e, p in zip(expected, student, strict=True):
        e.grad = None if p.grad is None else p.grad.clone()
    reference_clip_gradients(expected, 3.0)
    model.on_before_optimizer_step(None)
    clipped = 0
    for e, p in zip(expected, student, strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, e.grad)
            clipped += bool(p.grad.norm() < 3.0 + 1e-4 and e.grad.norm() > 2.99)
    assert clipped > 0


def test_byol_views_are_asymmetric(tmp_path):
    # without the shared augment.ssl ops, what is left is BYOL's per-view blur and solarisation
    cfg = compose_cfg(tmp_path, ["model=byol", "augment@augment.ssl=none", "data.train_count=400"])
    transform = build_datamodule(cfg).transform
    assert isinstance(transform.augment, nn.ModuleList) and len(transform.augment) == 2
    probabilities = [[(type(op).__name__, op.p) for op in pipe.ops[1:]] for pipe in transform.augment]
    assert probabilities == [
        [("RandomGaussianBlur", 1.0)],
        [("RandomGaussianBlur", 0.1), ("RandomSolarize", 0.2)],
    ]
    torch.manual_seed(0)
    images = torch.randint(0, 256, (400, 3, 16, 16), dtype=torch.uint8)
    plain = transform(images)
    v1, v2 = transform.train_views(images)
    unchanged = [(v - plain).flatten(1).abs().amax(1) < 1e-6 for v in (v1, v2)]
    assert unchanged[0].float().mean() < 0.15  # view 1: always blurred (σ near 0.1 px leaves a tile as it is)
    assert 0.6 < unchanged[1].float().mean() < 0.85  # view 2: untouched with p = 0.9 × 0.8 = 0.72
    # SimCLR keeps one pipeline for both views
    assert not isinstance(build_datamodule(compose_cfg(tmp_path, ["model=simclr"])).transform.augment, nn.ModuleList)


def test_per_view_pipelines_must_match_the_views(tmp_path):
    from sslpath.core.errors import UserError

    cfg = compose_cfg(tmp_path, ["model=byol", "model.input.views=3"])
    with pytest.raises(Exception) as err:  # Hydra's instantiate wraps it; the entry points unwrap it (exit 2)
        build_datamodule(cfg)
    cause = err.value
    while cause is not None and not isinstance(cause, UserError):
        cause = cause.__cause__
    assert cause is not None and "lists 2 per-view pipelines but model.input.views=3" in str(cause)
