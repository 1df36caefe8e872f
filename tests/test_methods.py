"""The SSL methods beside SimCLR (BYOL, MoCo v3, Barlow Twins, VICReg, DINO): each loss against its
paper's formula written out here, the momentum copies' updates, the DDP gather of MoCo v3 (and
VICReg), and every method chaining into a fine-tune on tiny synthetic data."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from sslpath.checks.validate import check_optimized_metric, validate
from sslpath.models import registry
from sslpath.models.checkpoint import load_checkpoint, read_metadata
from sslpath.models.losses import MoCoV3Loss, info_nce
from sslpath.models.ssl import SSLMethod
from sslpath.training import chain
from sslpath.training.fit import train

import helpers
from factories import SMALL_HEADS, build, compose_cfg, fit, read_metrics

METHODS = list(SMALL_HEADS)
MOMENTUM_METHODS = ["byol", "mocov3", "dino"]


# --------------------------------------------------------------------------------------------
# Losses: the criterion each configured model holds, against the paper's formula


def test_byol_loss_is_two_minus_two_cosine_both_ways(tmp_path):
    criterion = build(tmp_path, "byol").criterion
    # hand case: p ∥ z' -> 0, p ⟂ z' -> 2, p = −z' -> 4 (scale does not matter)
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    z = torch.tensor([[5.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert criterion(p, p, z, z).item() == pytest.approx(2 * (0 + 2 + 4) / 3)
    # the paper's eq. 2, symmetrised: mean ‖p̄1 − z̄2‖² + mean ‖p̄2 − z̄1‖²
    gen = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(6, 5, generator=gen) for _ in range(4))

    def mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return ((F.normalize(p, dim=1) - F.normalize(z, dim=1)) ** 2).sum(dim=1).mean()

    assert criterion(p1, p2, z1, z2).item() == pytest.approx((mse(p1, z2) + mse(p2, z1)).item(), rel=1e-5)


def test_mocov3_loss_is_infonce_against_momentum_keys(tmp_path):
    model = build(tmp_path, "mocov3")
    t = model.criterion.temperature
    assert t == 0.2  # conf/model/mocov3.yaml
    # hand case: queries equal to their keys and orthogonal to the other keys -> −log(e^{1/t} / (e^{1/t} + 1)) · 2t
    eye = torch.eye(2)
    loss, top1 = model.criterion(eye, eye, eye, eye)
    one = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 1)) * 2 * t
    assert loss.item() == pytest.approx(2 * one, rel=1e-6) and top1.item() == 1.0
    # the paper's Algorithm 1 as a loop: ctr(q1, k2) + ctr(q2, k1), ctr = CE(q·kᵀ/t, diagonal) · 2t
    gen = torch.Generator().manual_seed(1)
    q1, q2, k1, k2 = (torch.randn(5, 7, generator=gen) for _ in range(4))

    def ctr(q: torch.Tensor, k: torch.Tensor) -> float:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = [[q[i] @ k[j] / t for j in range(len(k))] for i in range(len(q))]
        terms = [-(logits[i][i] - torch.logsumexp(torch.stack(logits[i]), 0)) for i in range(len(q))]
        return float(torch.stack(terms).mean()) * 2 * t

    q1.requires_grad_(True)
    k2.requires_grad_(True)
    loss, _ = model.criterion(q1, q2, k1, k2)
    assert loss.item() == pytest.approx(ctr(q1.detach(), k2.detach()) + ctr(q2, k1), rel=1e-5)
    loss.backward()
    assert q1.grad is not None and k2.grad is None  # keys are targets: no gradient reaches the momentum side


def test_barlow_twins_loss_is_the_cross_correlation_formula(tmp_path):
    criterion = build(tmp_path, "barlowtwins").criterion
    lam = 0.005  # conf/model/barlowtwins.yaml
    gen = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen) * 3 + 1
    n, d = z1.shape

    def batch_norm(z: torch.Tensor) -> torch.Tensor:  # per dimension over the batch, as BatchNorm (biased var, eps 1e-5)
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)

    a, b = batch_norm(z1), batch_norm(z2)
    c = [[sum(a[k, i] * b[k, j] for k in range(n)) / n for j in range(d)] for i in range(d)]
    on_diagonal = sum((1 - c[i][i]) ** 2 for i in range(d))
    off_diagonal = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    assert criterion(z1, z2).item() == pytest.approx(float(on_diagonal + lam * off_diagonal), rel=1e-5)
    # identical, decorrelated views: C = I, loss 0
    ortho = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert criterion(ortho, ortho).item() == pytest.approx(0.0, abs=1e-4)


def test_vicreg_loss_is_invariance_variance_covariance(tmp_path):
    criterion = build(tmp_path, "vicreg").criterion
    lam, mu, nu, eps = 25.0, 25.0, 1.0, 1e-4  # conf/model/vicreg.yaml; eps as the authors' code
    gen = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(10, 4, generator=gen) * 0.5, torch.randn(10, 4, generator=gen) * 2
    n, d = z1.shape

    def variance(z: torch.Tensor) -> torch.Tensor:  # hinge on each dimension's std, mean over dimensions
        return torch.stack([F.relu(1 - torch.sqrt(z[:, j].var() + eps)) for j in range(d)]).mean()

    def covariance(z: torch.Tensor) -> torch.Tensor:  # squared off-diagonal covariances / d
        zc = z - z.mean(0)
        cov = zc.T @ zc / (n - 1)
        return sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    invariance = ((z1 - z2) ** 2).mean()
    # The paper's eq. 6 sums v(Z) + v(Z'); the authors' code (and lightly) average them, and μ = 25 was set with it.
    expected = lam * invariance + mu * (variance(z1) + variance(z2)) / 2 + nu * (covariance(z1) + covariance(z2))
    assert criterion(z1, z2).item() == pytest.approx(expected.item(), rel=1e-5)
    # hand case: equal views with uncorrelated unit-variance dimensions cost nothing; shrunk to std 1/2,
    # only the variance hinge is left: μ · (1 − √(1/4 + eps)) (both views, averaged)
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) * math.sqrt(3 / 4)
    assert criterion(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert criterion(z / 2, z / 2).item() == pytest.approx(mu * (1 - math.sqrt(1 / 4 + eps)), rel=1e-5)


def test_dino_loss_is_cross_entropy_of_centred_sharpened_teacher(tmp_path):
    criterion = build(tmp_path, "dino").criterion
    t_teacher, t_student, m = 0.04, 0.1, 0.9  # conf/model/dino.yaml
    gen = torch.Generator().manual_seed(4)
    teacher = [torch.randn(6, 16, generator=gen) for _ in range(2)]
    student = [torch.randn(6, 16, generator=gen) for _ in range(2)]

    def expected(centre: torch.Tensor) -> float:
        # Σ over teacher view i ≠ student view j of mean_b −Σ_k softmax((t_i − c)/τ_t) · log softmax(s_j/τ_s)
        terms = [
            -(F.softmax((teacher[i] - centre) / t_teacher, dim=1) * F.log_softmax(student[j] / t_student, dim=1)).sum(1).mean()
            for i in range(2)
            for j in range(2)
            if i != j
        ]
        return float(torch.stack(terms).mean())

    centre = torch.zeros(16)
    assert criterion(teacher, student, epoch=0).item() == pytest.approx(expected(centre), rel=1e-5)
    # the centre follows the teacher outputs' mean: c ← m·c + (1 − m)·mean, and the next call subtracts it
    centre = m * centre + (1 - m) * torch.cat(teacher).mean(0)
    torch.testing.assert_close(criterion.loss.center.flatten(), centre)
    assert criterion(teacher, student, epoch=0).item() == pytest.approx(expected(centre), rel=1e-5)


# --------------------------------------------------------------------------------------------
# Momentum copies


class RecordSteps(L.Callback):
    """Online and momentum parameters before and after each optimiser step, and whether a frozen one had a gradient."""

    def __init__(self) -> None:
        self.before: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []
        self.frozen_grads: list[bool] = []

    @staticmethod
    def snapshot(model: SSLMethod) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before.append(self.snapshot(pl_module))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.frozen_grads.append(any(p.grad is not None for p in pl_module.parameters() if not p.requires_grad))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(self.snapshot(pl_module))


def momentum_pairs(model: SSLMethod) -> dict[str, str]:
    """Each momentum-copy parameter's name -> the online parameter it follows."""
    child = {id(m): n for n, m in model.named_children()}
    pairs = {}
    for target, online in ((model.target, model.online), (model.momentum_projector, model.projector)):
        for key, _ in target.named_parameters():
            pairs[f"{child[id(target)]}.{key}"] = f"{child[id(online)]}.{key}"
    return pairs


# The exported `backbone` (what fine-tunes load) is the online network, except DINO's teacher.
EXPORTED = {"byol": "online", "mocov3": "online", "dino": "target"}


@pytest.mark.parametrize("method", MOMENTUM_METHODS)
def test_momentum_copies_follow_the_schedule_after_each_step(tmp_path, method):
    # the paper's schedule as is (no lowering of momentum_start for the run's length)
    model = build(tmp_path, method, "model.momentum_start=0.5", "model.momentum_max_init_share=null")
    params = dict(model.named_parameters())
    pairs = momentum_pairs(model)
    targets = {n.split(".")[0] for n in pairs}
    copy = "backbone" if EXPORTED[method] == "target" else "momentum_backbone"
    assert targets == {copy, "momentum_projector"}
    assert (model.backbone is model.target) == (EXPORTED[method] == "target")
    for name, twin in pairs.items():  # the copy starts as the online network and is frozen
        assert torch.equal(params[name], params[twin]) and not params[name].requires_grad

    record = RecordSteps()
    trainer = fit(model, steps=3, batch=8, callbacks=[record])

    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(params[n]) for n in pairs}  # not in the optimiser's param groups
    assert record.frozen_grads == [False] * 3  # and never given a gradient
    # m_k = 1 − (1 − m_start)(cos(πk/(K−1)) + 1)/2 over K = 3 steps (BYOL's cosine, reaching 1 at the last step)
    for k, m in enumerate([0.5, 0.75, 1.0]):
        before, after = record.before[k], record.after[k]
        assert any(not torch.equal(before[t], after[t]) for t in pairs.values())  # the step moved θ
        for name, twin in pairs.items():
            torch.testing.assert_close(after[name], m * before[name] + (1 - m) * after[twin], rtol=1e-6, atol=1e-7)
    assert model.run_record() == {"momentum_start": 0.5, "target_init_share": pytest.approx(0.5 * 0.75 * 1.0)}
    # saved with the model; load_ssl_backbone takes backbone.*: the online network, or DINO's teacher
    keys = [k for k in model.state_dict() if "momentum" in k or "online" in k]
    assert keys and all(k.startswith(("momentum_backbone.", "momentum_projector.", "online_backbone.")) for k in keys)


# --------------------------------------------------------------------------------------------
# End to end: `model=<method>` as the SSL stage of a chained fine-tune, selected by model@pretrain


def test_every_method_is_a_known_ssl_kind_with_a_config(tmp_path):
    builtin = {k for k in registry.ssl_kinds() if registry.class_of(k).__module__.startswith("sslpath.")}
    assert builtin == {"simclr", *METHODS}  # every SSL method sslpath ships is tested (SimCLR in test_train.py)
    for method in METHODS:
        cfg = compose_cfg(tmp_path, [f"model={method}"])
        validate(cfg)
        check_optimized_metric(cfg)  # val/acc is among what SSL models log
        assert registry.is_ssl(method) and cfg.model.input.views == 2
        # model@pretrain=<method> picks the SSL stage; pretrain.backbone still follows model.backbone
        ft = compose_cfg(tmp_path, ["model=finetune", f"model@pretrain={method}", "model.backbone.stem=reference"])
        assert ft.pretrain._target_ == cfg.model._target_ and ft.pretrain.backbone.stem == "reference"
        assert chain.stage_dir(ft).name.startswith(f"{method}-")


@pytest.mark.cli  # a chain: SSL stage, then fine-tune (the multi-stage scenarios' tier)
@pytest.mark.parametrize("method", METHODS)
def test_method_pretrains_and_chains_into_finetuning(tmp_path, method):
    helpers.RECORDED.clear()
    heads = [f"pretrain.{o}" for o in SMALL_HEADS[method]]
    record = "+callbacks.record._target_=helpers.RecordBackbone"
    cfg = compose_cfg(tmp_path, ["model=finetune", f"model@pretrain={method}", *heads, "report=false", record])
    metrics = train(cfg)
    stage = chain.ssl_run_dir(metrics)  # the SSL stage's run dir: <paths.pretrain_dir>/<method>-<key>
    assert stage == chain.stage_dir(cfg).resolve() and stage.name.startswith(f"{method}-")
    pre = read_metrics(stage)
    assert metrics["pretrained_ckpt"] == pre["ckpt_path"]
    assert pre["model"] == method and 0 <= pre["val_knn_acc"] <= 1 and math.isfinite(pre["test_loss"])
    ckpt = load_checkpoint(pre["ckpt_path"])
    assert read_metadata(ckpt, pre["ckpt_path"]).kind == method
    state = ckpt["state_dict"]
    if method in MOMENTUM_METHODS:  # the momentum copy is kept: DINO's student beside its exported teacher
        other = "online_backbone." if EXPORTED[method] == "target" else "momentum_backbone."
        assert any(k.startswith(other) for k in state)
        assert 0 <= pre["target_init_share"] <= 0.1 + 1e-9 and 0 < pre["momentum_start"] <= 1
    # the fine-tune started from the exported backbone, exactly, and from nothing else
    start = helpers.RECORDED["finetune"]
    assert start.keys() == {k.removeprefix("backbone.") for k in state if k.startswith("backbone.")}
    for key, value in start.items():
        assert torch.equal(value, state[f"backbone.{key}"]), key
    assert not all(torch.equal(helpers.RECORDED[method][k], v) for k, v in start.items())  # SSL trained it
    assert metrics["model"] == "finetune" and 0 <= metrics["test_acc"] <= 1


# --------------------------------------------------------------------------------------------
# DDP: the gathering losses on 2 gloo ranks equal one process on the whole batch

WORLD, N, D_IN, D = 2, 5, 6, 4


def ddp_batch() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(6)
    return tuple(torch.randn(WORLD * N, D_IN, generator=gen) for _ in range(4))  # views 1, 2 and keys 1, 2


def projectors() -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(7)
    return nn.Linear(D_IN, D), nn.Linear(D_IN, D)


def mocov3_loss(proj: nn.Module, h1, h2, k1, k2, gather: bool) -> tuple[torch.Tensor, torch.Tensor]:
    q1, q2 = proj(torch.cat([h1, h2])).chunk(2)
    return MoCoV3Loss(0.3, gather_distributed=gather)(q1, q2, k1[:, :D], k2[:, :D])


def vicreg_loss(proj: nn.Module, h1, h2, gather: bool) -> torch.Tensor:
    from lightly.loss import VICRegLoss

    z1, z2 = proj(torch.cat([h1, h2])).chunk(2)
    return VICRegLoss(gather_distributed=gather)(z1, z2)


def _rank(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=WORLD)
    try:
        h1, h2, k1, k2 = (t[rank * N : (rank + 1) * N] for t in ddp_batch())
        moco, vic = (nn.parallel.DistributedDataParallel(p) for p in projectors())  # average gradients over ranks
        loss, top1 = mocov3_loss(moco, h1, h2, k1, k2, gather=True)
        loss.backward()
        local, _ = mocov3_loss(moco.module, h1, h2, k1, k2, gather=False)
        vic_loss = vicreg_loss(vic, h1, h2, gather=True)
        vic_loss.backward()
        modules = {"moco": moco.module, "vic": vic.module}
        grads = {f"{name}.{k}": p.grad for name, m in modules.items() for k, p in m.named_parameters()}
        record = {"loss": loss.detach(), "top1": top1, "local": local.detach(), "vic": vic_loss.detach(), **grads}
        torch.save(record, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.cli
def test_gathering_losses_under_ddp_match_one_process(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path),), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    h1, h2, k1, k2 = ddp_batch()
    moco, vic = projectors()
    loss, top1 = mocov3_loss(moco, h1, h2, k1, k2, gather=False)
    loss.backward()
    vic_loss = vicreg_loss(vic, h1, h2, gather=False)
    vic_loss.backward()
    # MoCo v3: each rank scores its own queries against every rank's keys; the ranks' mean is the
    # one-process loss, and DDP's averaged gradients are the one-process gradients
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, loss.detach())
    torch.testing.assert_close(sum(r["top1"] for r in ranks) / WORLD, top1)
    assert all(not torch.allclose(r["local"], r["loss"]) for r in ranks)  # without the gather: fewer negatives
    # VICReg: invariance per rank, variance and covariance over the gathered global batch
    torch.testing.assert_close(sum(r["vic"] for r in ranks) / WORLD, vic_loss.detach())
    for r in ranks:
        for name, module in (("moco", moco), ("vic", vic)):
            for key, param in module.named_parameters():
                torch.testing.assert_close(r[f"{name}.{key}"], param.grad, msg=f"{name}.{key}")
    # sanity of the reference itself: the loss is InfoNCE on the whole batch
    q1, q2 = moco(torch.cat([h1, h2])).chunk(2)
    expected = info_nce(q1, k2[:, :D], 0.3)[0] + info_nce(q2, k1[:, :D], 0.3)[0]
    torch.testing.assert_close(expected.detach(), loss.detach())
