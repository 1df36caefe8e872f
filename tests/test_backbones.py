"""torchvision backbones (ResNet-18/50 with small-tile stems) and the tiny test CNN.
timm models: tests/test_backbones_timm.py."""

import re
import socket
from pathlib import Path

import pytest
import torch

from sslpath.core.errors import UserError
from sslpath.models import backbones
from sslpath.models.checkpoint import load_inference_model
from sslpath.training.fit import train

from factories import compose_cfg, read_metrics


def stage_shapes(net, size):
    x = net.stem(torch.zeros(2, 3, size, size))
    shapes = [tuple(x.shape[-2:])]
    for stage in net.stages:
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


def test_reference_stem_matches_notebook_design():
    net = backbones.resnet18("reference")
    assert stage_shapes(net, 28) == [(28, 28), (64, 28, 28), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
    # layer2 replaced by a single stride-1 3x3 conv 64->128 + BN + ReLU
    conv, bn, relu = net.stages[1]
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.in_channels == 64 and conv.out_channels == 128
    assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)
    assert net(torch.zeros(2, 3, 28, 28)).shape == (2, 512)


def test_cifar_and_imagenet_stems():
    cifar = backbones.resnet18("cifar")
    assert stage_shapes(cifar, 28)[-1] == (512, 4, 4)
    assert cifar.stem[0].kernel_size == (3, 3) and cifar.stem[0].stride == (1, 1)
    imagenet = backbones.resnet18("imagenet")
    assert imagenet.stem[0].kernel_size == (7, 7)
    assert isinstance(imagenet.stem[-1], torch.nn.MaxPool2d)
    assert imagenet(torch.zeros(2, 3, 64, 64)).shape == (2, 512)


def test_unknown_stem_and_too_small_input_are_user_errors():
    with pytest.raises(UserError, match="stem"):
        backbones.resnet18("vgg")
    with pytest.raises(UserError, match="too small"):
        backbones.check_input_size("resnet18", "imagenet", 28)
    backbones.check_input_size("tiny", "imagenet", 16)  # the stem only applies to ResNets
    with pytest.raises(UserError, match="not one of resnet18, resnet50, tiny, or timm/<name>"):
        backbones.build("vgg16")


def test_tiny_backbone_is_small_and_shaped_for_tests():
    net = backbones.build("tiny")
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, net.out_dim)
    assert sum(p.numel() for p in net.parameters()) < 10_000


@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    """torch hub's cache in a fresh folder, and any network attempt fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network connection attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch hub's cache: $TORCH_HOME/hub
    return tmp_path / "hub"


@pytest.mark.parametrize("name, file", [("resnet18", "resnet18-f37072fd"), ("resnet50", "resnet50-11ad3fa6")])
def test_pretrained_not_cached_is_a_clear_error_naming_the_file_without_network(hub_dir, name, file):
    where = re.escape(str(hub_dir / "checkpoints" / f"{file}.pth"))
    with pytest.raises(
        UserError,
        match=rf"pretrained=true needs torchvision's ImageNet {name} .*never the network\. Download "
        rf"https://download\.pytorch\.org/models/{file}\.pth on a machine with internet and put it at {where} .*pretrained=false",
    ):
        backbones.build(name, "cifar", pretrained=True)


def test_pretrained_loads_cached_weights_only(hub_dir):
    reference = backbones.tv_resnet18(weights=None).state_dict()
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(reference, hub_dir / "checkpoints" / "resnet18-f37072fd.pth")
    net = backbones.resnet18("imagenet", pretrained=True)
    assert torch.equal(net.stages[0][0].conv1.weight, reference["layer1.0.conv1.weight"])
    assert torch.equal(net.stem[0].weight, reference["conv1.weight"])
    (hub_dir / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"half a download")
    with pytest.raises(UserError, match=r"resnet18-f37072fd.pth is not torchvision's ImageNet resnet18 weights.*Delete it"):
        backbones.resnet18("imagenet", pretrained=True)


def test_resnet50_cifar_stem_gives_2048_features_at_28px():
    net = backbones.build("resnet50", "cifar").eval()
    assert net.out_dim == 2048 and net.stem[0].kernel_size == (3, 3) and net.stem[0].stride == (1, 1)
    assert isinstance(net.stem[-1], torch.nn.Identity)  # no max-pool
    with torch.no_grad():  # one 28 px image: a ResNet-50 forward at full resolution is slow on 2 CPU cores
        assert net(torch.zeros(1, 3, 28, 28)).shape == (1, 2048)
    assert [stage[0].conv2.stride for stage in net.stages] == [(1, 1), (2, 2), (2, 2), (2, 2)]  # 28, 14, 7, 4
    assert backbones.build("resnet50", "imagenet").stem[0].kernel_size == (7, 7)


def test_small_tile_stem_keeps_resnet18_checkpoint_layout():
    """Checkpoints written before resnet50 existed hold stem.0 (conv) and stem.1 (BN): still the names."""
    keys = [k for k in backbones.resnet18("cifar").state_dict() if k.startswith("stem.")]
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    assert keys == ["stem.0.weight", *(f"stem.1.{k}" for k in bn)]


def test_reference_stem_is_resnet18_only():
    with pytest.raises(UserError, match="only applies to model.backbone.name=resnet18, not resnet50"):
        backbones.build("resnet50", "reference")
    with pytest.raises(UserError, match="only applies to .*resnet18"):
        backbones.check_input_size("resnet50", "reference", 28)
    with pytest.raises(UserError, match="too small"):
        backbones.check_input_size("resnet50", "imagenet", 28)
    backbones.check_input_size("resnet50", "cifar", 28)


@pytest.mark.slow  # ~30 s on 2 CPU cores
def test_resnet50_trains_end_to_end(tmp_path):
    sizes = ["data.train_count=48", "data.val_count=24", "data.test_count=24"]  # 16 px tiles, 2 batches of 24, 1 epoch
    train(compose_cfg(tmp_path, ["model=baseline", "model.backbone.name=resnet50", *sizes]))
    saved = read_metrics(tmp_path)
    model, meta = load_inference_model(saved["ckpt_path"])
    assert (meta.backbone, meta.stem, meta.image_size) == ("resnet50", "cifar", 16)
    assert model.backbone.out_dim == 2048 and model(torch.zeros(2, 3, 16, 16)).shape == (2, 9)
