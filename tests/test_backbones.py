import urllib.error

import pytest
import torch

from sslpath import backbones
from sslpath.errors import UserError


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
    with pytest.raises(UserError, match="not one of resnet18, tiny"):
        backbones.build("vgg16")


def test_tiny_backbone_is_small_and_shaped_for_tests():
    net = backbones.build("tiny")
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, net.out_dim)
    assert sum(p.numel() for p in net.parameters()) < 10_000


def test_pretrained_offline_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"pretrained=true .*resnet18-f37072fd\.pth.*pretrained=false"):
        backbones.resnet18("cifar", pretrained=True)


def test_pretrained_loads_cached_weights(monkeypatch):
    reference = backbones.tv_resnet18(weights=None).state_dict()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: reference)
    net = backbones.resnet18("imagenet", pretrained=True)
    assert torch.equal(net.stages[0][0].conv1.weight, reference["layer1.0.conv1.weight"])
    assert torch.equal(net.stem[0].weight, reference["conv1.weight"])
