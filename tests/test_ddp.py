"""Scale-out: NT-Xent over the global batch under DDP (2 CPU processes, gloo), and the SLURM launcher config.

The DDP test runs SimCLR.global_views (LightningModule.all_gather(..., sync_grads=True) through
Lightning's DDPStrategy, i.e. torch.distributed.nn.functional.all_gather) and sslpath.losses.nt_xent
on each rank's half of a batch, with a DDP-wrapped projector, and compares with one process on the
whole batch. A tiny `trainer=ddp` run on 2 CPU processes then checks that SimCLR.training_step
really trains on the gathered global batch.
"""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sslpath.data import synthetic_splits
from conftest import TINY, run_cli

WORLD = 2
N, D_IN, D = 6, 10, 8  # images per rank, projector input and embedding widths
TEMPERATURE = 0.3


def global_batch() -> tuple[torch.Tensor, torch.Tensor, nn.Linear]:
    """Features of both views of WORLD * N images, and the projector every rank starts from."""
    gen = torch.Generator().manual_seed(0)
    h1, h2 = torch.randn(WORLD * N, D_IN, generator=gen), torch.randn(WORLD * N, D_IN, generator=gen)
    torch.manual_seed(1)
    return h1, h2, nn.Linear(D_IN, D)


def _rank(rank: int, out: str) -> None:
    """One DDP rank: its slice of the batch through the same steps as SimCLR.training_step."""
    from lightning.pytorch.strategies import DDPStrategy

    from sslpath.backbones import resnet18
    from sslpath.losses import nt_xent
    from sslpath.models import SimCLR

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=WORLD)
    try:
        h1, h2, projector = global_batch()
        local = slice(rank * N, (rank + 1) * N)
        ddp = nn.parallel.DistributedDataParallel(projector)  # averages parameter gradients over ranks
        # A real SimCLR, attached to a stand-in trainer with Lightning's DDP strategy: its global_views
        # goes through LightningModule.all_gather -> DDPStrategy.all_gather, as in training.
        model = SimCLR(backbone=resnet18(), num_classes=9, optimizer=partial(torch.optim.SGD, lr=0.1))
        model.trainer = SimpleNamespace(world_size=WORLD, strategy=DDPStrategy())
        z = ddp(torch.cat([h1[local], h2[local]]))  # training_step: projector(backbone(views)) ...
        z.retain_grad()
        g1, g2 = model.global_views(*z.chunk(2))  # ... .chunk(2), gathered over ranks
        loss, acc = nt_xent(g1, g2, TEMPERATURE)
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "acc": acc, "g1": g1.detach(), "g2": g2.detach(), "z_grad": z.grad,
             "weight_grad": projector.weight.grad, "bias_grad": projector.bias.grad},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_nt_xent_and_gradients_under_ddp_match_one_process(tmp_path):
    from sslpath.losses import nt_xent

    mp.spawn(_rank, args=(str(tmp_path),), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # One process, the whole batch: the loss SimCLR should optimise.
    h1, h2, projector = global_batch()
    z = projector(torch.cat([h1, h2]))
    z.retain_grad()
    z1, z2 = z.chunk(2)
    loss, acc = nt_xent(z1, z2, TEMPERATURE)
    loss.backward()

    for rank, got in enumerate(ranks):
        local = slice(rank * N, (rank + 1) * N)
        # every rank sees all 2 * WORLD * N embeddings, rank-major, partners still aligned
        torch.testing.assert_close(got["g1"], z1.detach())
        torch.testing.assert_close(got["g2"], z2.detach())
        torch.testing.assert_close(got["loss"], loss.detach())
        assert got["acc"].item() == acc.item()
        # all_gather's backward sums the gradient of every rank's (identical) loss into each rank's
        # embeddings: WORLD times the one-process gradient of that rank's rows ...
        single = torch.cat([z.grad[:WORLD * N][local], z.grad[WORLD * N:][local]])
        torch.testing.assert_close(got["z_grad"], WORLD * single)
        # ... and DDP's average over ranks turns that into exactly the one-process parameter gradient.
        torch.testing.assert_close(got["weight_grad"], projector.weight.grad)
        torch.testing.assert_close(got["bias_grad"], projector.bias.grad)
    assert loss.item() > 0 and projector.weight.grad.abs().sum() > 0


class GatherSpy(L.Callback):
    """Records, on every rank, the rows SimCLR.training_step hands to NT-Xent before and after the gather."""

    def __init__(self, out: str) -> None:
        self.out, self.calls = Path(out), []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        inner = pl_module.global_views

        def spy(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            g1, g2 = inner(z1, z2)
            self.calls.append({"local": len(z1), "global": [len(g1), len(g2)], "grad": g1.requires_grad})
            return g1, g2

        pl_module.global_views = spy

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        del pl_module.global_views
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"world_size": trainer.world_size, "calls": self.calls}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def test_simclr_trains_on_the_global_batch_with_trainer_ddp(tmp_path):
    result = run_cli(
        # 35 test images: 18 + 17 per rank, so the test stage must drop the padding
        "model=ssl", *[o for o in TINY if not o.startswith("data.test_count")], "data.test_count=35", "data.batch_size=12",
        # trainer=ddp on 2 CPU processes (gloo); SyncBatchNorm needs GPUs
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false",
        "+callbacks.spy._target_=test_ddp.GatherSpy", f"+callbacks.spy.out={tmp_path}/spy",
        f"hydra.run.dir={tmp_path}/run", f"paths.log_dir={tmp_path}/logs",
        cwd=tmp_path, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((tmp_path / "spy" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for record in records:
        assert record["world_size"] == WORLD
        # 72 training images, 36 per rank, batches of 12: 3 steps, each gathering both ranks' views
        assert record["calls"] == [{"local": 12, "global": [24, 24], "grad": True}] * 3
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"] == "ssl" and metrics["epochs"] == 1
    rows = list(csv.DictReader((tmp_path / "run" / "test_predictions.csv").open()))
    expected = synthetic_splits(16, 9, {"train": 72, "val": 36, "test": 35}, seed=42)["test"].labels.tolist()
    assert [int(r["label"]) for r in rows] == expected  # every test image once, in split order
    assert metrics["test_acc"] == pytest.approx(sum(r["label"] == r["pred"] for r in rows) / 35)


def test_global_views_is_identity_on_one_process():
    from sslpath.backbones import resnet18
    from sslpath.models import SimCLR

    model = SimCLR(backbone=resnet18(), num_classes=9, optimizer=partial(torch.optim.SGD, lr=0.1))
    model.trainer = SimpleNamespace(world_size=1)
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    g1, g2 = model.global_views(z1, z2)
    assert g1 is z1 and g2 is z2


def test_gather_views_keeps_partners_aligned_and_checks_shapes():
    from sslpath.losses import gather_views

    z1, z2 = torch.arange(6.0).reshape(3, 2), -torch.arange(6.0).reshape(3, 2)
    fake_gather = lambda t: torch.stack([t, t + 100])  # two ranks, rank 1's rows shifted by 100
    g1, g2 = gather_views(z1, z2, fake_gather)
    torch.testing.assert_close(g1, torch.cat([z1, z1 + 100]))
    torch.testing.assert_close(g2, torch.cat([z2, z2 + 100]))
    with pytest.raises(ValueError, match="all_gather returned"):
        gather_views(z1, z2, lambda t: t)  # Lightning's all_gather outside DDP: no rank dimension
    with pytest.raises(ValueError, match="equal shape"):
        gather_views(z1, z2[:2], fake_gather)


def test_slurm_launcher_config_composes(tmp_path):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[sweeps]'")
    GlobalHydra.instance().clear()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp", f"paths.log_dir={tmp_path}"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu"
    assert launcher.tasks_per_node == launcher.gpus_per_node == 1 and launcher.nodes == 1
    assert launcher.timeout_min > 0 and launcher.cpus_per_task > 0 and launcher.mem_gb > 0
    assert launcher.submitit_folder.endswith(".submitit/%j")
    assert cfg.trainer.strategy == "ddp"
