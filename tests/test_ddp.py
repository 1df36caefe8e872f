"""Scale-out under DDP (2 CPU processes, gloo): NT-Xent over the global batch with the right
gradients, per-rank augmentation seeds, evaluation without padded duplicates, the kNN monitor pooled
over ranks, a real `trainer=ddp` run, and the SLURM launcher config."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sslpath.data.loader import PAD_LABEL, BatchLoader
from sslpath.data.splits import Split
from sslpath.data.synthetic import synthetic_splits
from sslpath.models.knn import WeightedKNN
from sslpath.models.losses import NTXentLoss, nt_xent

from factories import TINY, read_metrics, run_cli

WORLD = 2
N, D_IN, D = 6, 10, 8  # images per rank, projector input and embedding widths
TEMPERATURE = 0.3
EVAL_N = 35  # odd: the second rank's share is padded by one image


def global_batch() -> tuple[torch.Tensor, torch.Tensor, nn.Linear]:
    """Features of both views of WORLD * N images, and the projector every rank starts from."""
    gen = torch.Generator().manual_seed(0)
    h1, h2 = torch.randn(WORLD * N, D_IN, generator=gen), torch.randn(WORLD * N, D_IN, generator=gen)
    torch.manual_seed(1)
    return h1, h2, nn.Linear(D_IN, D)


def knn_data() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(2)
    labels = torch.arange(40) % 4
    bank = torch.randn(40, 5, generator=gen) + labels[:, None]
    test_labels = torch.arange(EVAL_N) % 4
    return bank, labels, torch.randn(EVAL_N, 5, generator=gen) + test_labels[:, None], test_labels


def eval_split() -> Split:
    return Split(torch.zeros(EVAL_N, 3, 2, 2, dtype=torch.uint8), torch.arange(EVAL_N) % 3)


def _rank(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=WORLD)
    try:
        # NT-Xent: this rank's half of the batch through a DDP projector and the gathering loss
        h1, h2, projector = global_batch()
        local = slice(rank * N, (rank + 1) * N)
        ddp = nn.parallel.DistributedDataParallel(projector)  # averages parameter gradients over ranks
        z = ddp(torch.cat([h1[local], h2[local]]))
        z.retain_grad()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss, acc = NTXentLoss(TEMPERATURE, gather_distributed=True)(*z.chunk(2))
            loss.backward()
        # kNN monitor: each rank holds a shard of the bank and of the validation features
        bank, bank_labels, feats, labels = knn_data()
        knn = WeightedKNN(k=5, temperature=0.1, num_classes=4)
        knn.update(train_feats=bank[rank::WORLD], train_labels=bank_labels[rank::WORLD])
        knn.update(test_feats=feats[rank::WORLD], test_labels=labels[rank::WORLD])
        # evaluation shares: padded to equal length, the padding labelled -1 and ignored by metrics
        loader = BatchLoader(eval_split(), batch_size=4, shuffle=False, rank=rank, world_size=WORLD)
        seen = torch.cat([y for _, y in loader])
        from torchmetrics.classification import MulticlassAccuracy

        val_acc = MulticlassAccuracy(3, average="micro", ignore_index=PAD_LABEL)
        for _, y in loader:
            val_acc.update(torch.nn.functional.one_hot(torch.zeros_like(y).clamp(min=0), 3).float(), y)  # predicts 0
        torch.save(
            {
                "loss": loss.detach(),
                "acc": acc,
                "z_grad": z.grad,
                "weight_grad": projector.weight.grad,
                "bias_grad": projector.bias.grad,
                "knn": knn.compute(),
                "seen": seen,
                "val_acc": val_acc.compute(),
                "gather_warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
            },
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank, args=(str(out),), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.cli
def test_nt_xent_and_gradients_under_ddp_match_one_process(ranks):
    h1, h2, projector = global_batch()
    z = projector(torch.cat([h1, h2]))
    z.retain_grad()
    z1, z2 = z.chunk(2)
    loss, acc = nt_xent(z1, z2, TEMPERATURE)
    loss.backward()
    for rank, got in enumerate(ranks):
        local = slice(rank * N, (rank + 1) * N)
        torch.testing.assert_close(got["loss"], loss.detach())  # every rank scores the global batch
        assert got["acc"].item() == acc.item()
        # all_gather's backward sums the gradient of every rank's (identical) loss into each rank's
        # embeddings: WORLD times the one-process gradient of that rank's rows ...
        single = torch.cat([z.grad[: WORLD * N][local], z.grad[WORLD * N :][local]])
        torch.testing.assert_close(got["z_grad"], WORLD * single)
        # ... and DDP's average over ranks turns that into exactly the one-process parameter gradient.
        torch.testing.assert_close(got["weight_grad"], projector.weight.grad)
        torch.testing.assert_close(got["bias_grad"], projector.bias.grad)
    assert loss.item() > 0 and projector.weight.grad.abs().sum() > 0


@pytest.mark.cli
def test_gather_of_the_global_batch_warns_nothing(ranks):
    # torch 2.14 deprecates torch.distributed.nn.functional.all_gather with a FutureWarning on every call
    assert [r["gather_warnings"] for r in ranks] == [[]] * WORLD


@pytest.mark.cli
def test_knn_accuracy_is_pooled_over_ranks(ranks):
    bank, bank_labels, feats, labels = knn_data()
    one = WeightedKNN(k=5, temperature=0.1, num_classes=4)
    one.update(train_feats=bank, train_labels=bank_labels, test_feats=feats, test_labels=labels)
    expected = one.compute()
    assert 0.3 < expected < 1  # neither trivial nor perfect, so pooling errors would show
    for got in ranks:
        assert got["knn"].item() == pytest.approx(expected.item())


@pytest.mark.cli
def test_evaluation_counts_every_image_once(ranks):
    seen = torch.cat([got["seen"] for got in ranks])
    assert (seen == PAD_LABEL).sum() == WORLD * 18 - EVAL_N  # one padded position, marked
    real = eval_split().labels
    assert sorted(seen[seen != PAD_LABEL].tolist()) == sorted(real.tolist())
    for got in ranks:  # a model that always predicts class 0: accuracy over the 35 real images
        assert got["val_acc"].item() == pytest.approx((real == 0).float().mean().item())


class RankRecorder(L.Callback):
    """Per rank: NT-Xent input sizes (local and gathered) and the RNG state each epoch starts from."""

    def __init__(self, out: str) -> None:
        self.out, self.calls, self.rng = Path(out), [], []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import sslpath.models.losses

        inner = sslpath.models.losses.nt_xent
        pl_module.criterion.register_forward_pre_hook(lambda mod, args: self.calls.append({"local": len(args[0])}))

        def spy(z1: torch.Tensor, z2: torch.Tensor, temperature: float):
            self.calls[-1].update({"global": len(z1), "grad": z1.requires_grad})
            return inner(z1, z2, temperature)

        sslpath.models.losses.nt_xent = spy

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rng.append(int(torch.random.get_rng_state().sum()))  # after EpochSeed reseeded

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"world_size": trainer.world_size, "calls": self.calls, "rng": self.rng}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.cli
def test_simclr_trains_on_the_global_batch_with_trainer_ddp(tmp_path):
    result = run_cli(
        "model=simclr",
        *[o for o in TINY if not o.startswith("data.test_count")],
        f"data.test_count={EVAL_N}",
        "data.batch_size=12",
        # trainer=ddp on 2 CPU processes (gloo); SyncBatchNorm needs GPUs
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.sync_batchnorm=false",
        "+callbacks.spy._target_=test_ddp.RankRecorder",
        f"+callbacks.spy.out={tmp_path}/spy",
        f"hydra.run.dir={tmp_path}/run",
        f"paths.log_dir={tmp_path}/logs",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((tmp_path / "spy" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for record in records:
        assert record["world_size"] == WORLD
        # 72 training images, 36 per rank, batches of 12: 3 steps, each gathering both ranks' views
        assert record["calls"] == [{"local": 12, "global": 24, "grad": True}] * 3
    assert records[0]["rng"] != records[1]["rng"]  # each rank draws its own augmentations
    metrics = read_metrics(tmp_path / "run")
    assert metrics["model"] == "simclr" and metrics["epochs"] == 1
    rows = list(csv.DictReader((tmp_path / "run" / "test_predictions.csv").open()))
    expected = synthetic_splits(16, 9, {"train": 72, "val": 36, "test": EVAL_N}, seed=42)["test"].labels.tolist()
    assert [int(r["label"]) for r in rows] == expected  # every test image once, in split order
    assert metrics["test_acc"] == pytest.approx(sum(r["label"] == r["pred"] for r in rows) / EVAL_N)


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
