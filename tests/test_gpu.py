"""The CUDA paths: splits on the device or in pinned memory, bf16 augmentation and NT-Xent,
torch.compile, and a short training run. Skipped without CUDA; `scripts/gpu_check.sh` runs them
with `python -m pytest -m gpu tests/test_gpu.py`.
"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch import nn

from sslpath.data.synthetic import synthetic_splits
from sslpath.models.losses import nt_xent
from sslpath.training.build import build_datamodule, build_model
from sslpath.training.fit import train

from factories import compose_cfg

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TINY_BACKBONE = "model.backbone.name=tiny"


def gpu_trainer(tmp_path, **kwargs) -> L.Trainer:
    settings = dict(
        accelerator="gpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**settings, **kwargs})


def datamodule_on_gpu(tmp_path, on_device: str):
    """The data module as training builds it, set up under a one-GPU trainer."""
    cfg = compose_cfg(tmp_path, ["trainer=gpu", f"data.on_device={on_device}", TINY_BACKBONE])
    dm = build_datamodule(cfg)
    dm.trainer = gpu_trainer(tmp_path)
    dm.setup("fit")
    return dm


def test_splits_live_on_the_gpu_when_they_fit(tmp_path):
    dm = datamodule_on_gpu(tmp_path, "auto")  # the tiny splits take a few kB
    for name, split in dm.splits.items():
        assert split.images.device.type == "cuda" and split.labels.device.type == "cuda", name
    assert dm.pin_memory is False
    images, labels = next(iter(dm.train_dataloader()))
    assert images.device.type == "cuda" and images.dtype == torch.uint8 and labels.device.type == "cuda"


def test_host_splits_are_served_from_pinned_memory(tmp_path):
    dm = datamodule_on_gpu(tmp_path, "false")
    for name, split in dm.splits.items():
        assert split.images.device.type == "cpu", name
    assert dm.pin_memory is True
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        assert loader.pin_memory
        images, labels = next(iter(loader))
        assert images.is_pinned() and labels.is_pinned()


@pytest.mark.parametrize("augment, clean_first_view", [("simclr", False), ("reference", True)])
def test_augmentation_under_bf16_autocast_stays_fp32(tmp_path, augment, clean_first_view):
    cfg = compose_cfg(
        tmp_path,
        [
            "model=simclr",
            "trainer=gpu",
            TINY_BACKBONE,
            f"augment@augment.ssl={augment}",
            f"model.input.clean_first_view={str(clean_first_view).lower()}",
        ],
    )
    transform = build_datamodule(cfg).transform.cuda()
    size = int(cfg.data.size)
    images = synthetic_splits(size, 9, {"train": 64, "val": 1, "test": 1}, seed=0)["train"].images.cuda()

    seen: list[tuple[str, torch.dtype, bool, torch.dtype]] = []

    def record(op: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen.append((type(op).__name__, args[0].dtype, torch.is_autocast_enabled("cuda"), out.dtype))

    hooks = [op.register_forward_hook(record) for op in transform.augment.ops]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        views = transform.train_views(images)
        clean = transform(images)
    for hook in hooks:
        hook.remove()

    # every kornia op ran outside autocast, on fp32 input, giving fp32 output
    assert len(seen) == len(transform.augment.ops) * (1 if clean_first_view else 2)
    assert all(dtype_in == dtype_out == torch.float32 and not autocast for _, dtype_in, autocast, dtype_out in seen), seen

    assert len(views) == 2
    mean = torch.tensor(list(cfg.data.mean), device="cuda").view(1, -1, 1, 1)
    std = torch.tensor(list(cfg.data.std), device="cuda").view(1, -1, 1, 1)
    for view in (*views, clean):
        assert view.dtype == torch.float32 and view.shape == (64, 3, size, size)
        assert view.is_contiguous(memory_format=torch.channels_last)
        unit = view * std + mean  # normalised from [0, 1]
        assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5
    torch.testing.assert_close(clean, transform(images), rtol=0, atol=0)  # autocast changes nothing
    torch.testing.assert_close(clean.mul(std).add(mean), images.float() / 255, rtol=0, atol=1e-5)
    if clean_first_view:
        torch.testing.assert_close(views[0], clean, rtol=0, atol=0)


def test_nt_xent_under_bf16_autocast_computes_in_fp32():
    gen = torch.Generator(device="cuda").manual_seed(0)
    z1, z2 = (torch.randn(128, 64, device="cuda", generator=gen) for _ in range(2))
    ref_loss, ref_top1 = nt_xent(z1, z2, 0.2)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, top1 = nt_xent(z1, z2, 0.2)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref_loss.item()) <= 1e-6 and top1.item() == ref_top1.item()

    # bf16 embeddings, as a projector under autocast yields them: the loss is still fp32 maths
    projector = nn.Linear(64, 32).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        b1, b2 = projector(z1), projector(z2)
        loss = nt_xent(b1, b2, 0.2)[0]
    assert b1.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert abs(loss.item() - nt_xent(b1.float(), b2.float(), 0.2)[0].item()) <= 1e-6


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def test_compiled_backbone_trains(tmp_path):
    """SimCLR: the compiled backbone takes both views in one batch, under bf16 autocast."""
    cfg = compose_cfg(tmp_path, ["model=simclr", "trainer=gpu", TINY_BACKBONE, "model.compile=true"])
    dm = build_datamodule(cfg)
    net = build_model(cfg, dm.num_classes)
    assert net.backbone._compiled_call_impl is not None  # nn.Module.compile() in place
    before = {k: v.detach().clone() for k, v in net.backbone.state_dict().items()}
    recorder = LossRecorder()
    trainer = gpu_trainer(tmp_path, precision="bf16-mixed", max_steps=3, callbacks=[recorder])
    trainer.fit(net, datamodule=dm)
    assert trainer.global_step == 3 and len(recorder.losses) == 3
    assert all(torch.isfinite(torch.tensor(recorder.losses)))
    after = net.backbone.state_dict()
    assert after[next(iter(after))].device.type == "cuda"
    assert any(not torch.equal(before[k], after[k].to(before[k].device)) for k in before if before[k].is_floating_point())


@pytest.mark.parametrize("model", ["baseline", "finetune"])
def test_one_epoch_on_the_gpu(tmp_path, model):
    """A whole run (fit, best checkpoint, test) under trainer=gpu: bf16-mixed, splits on the device.
    finetune chains its SimCLR stage first, so both models and the checkpoint hand-over run."""
    metrics = train(compose_cfg(tmp_path, [f"model={model}", "trainer=gpu", "trainer.max_epochs=1", TINY_BACKBONE]))
    assert metrics["epochs"] == 1 and 0 <= metrics["test_acc"] <= 1
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test_acc"] == pytest.approx(metrics["test_acc"])
    config = (tmp_path / "config.yaml").read_text()
    assert "accelerator: gpu" in config and "precision: bf16-mixed" in config
    if model == "finetune":
        assert metrics["pretrained_ckpt"]
