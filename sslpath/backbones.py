"""Feature extractors for small tiles: torchvision's ResNets with small-tile stems, and a tiny CNN
for tests and smoke runs. `build` is what configs and checkpoints name."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.models import resnet18 as tv_resnet18

from sslpath.errors import UserError

log = logging.getLogger(__name__)

NAMES = ("resnet18", "tiny")
STEMS = ("cifar", "imagenet", "reference")
# Smallest input each stem can take: below it the last stage's feature map shrinks to nothing.
MIN_SIZE = {"cifar": 8, "reference": 8, "imagenet": 32}


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class ResNetFeatures(nn.Module):
    """Stem + stages + global average pool -> (N, 512) features."""

    out_dim = 512

    def __init__(self, stem: nn.Module, stages: list[nn.Module], stem_name: str) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.stem_name = stem_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


def resnet18(stem: str = "cifar", pretrained: bool = False) -> ResNetFeatures:
    """torchvision ResNet-18 with a stem for small inputs.

    cifar:     3×3 stride-1 conv, no max-pool (28 px -> 28, 14, 7, 4).
    imagenet:  torchvision's 7×7 stride-2 conv + max-pool (meant for >= 64 px).
    reference: the notebook's design: 3×3 stride-1 stem, layer1, a stride-1 3×3 conv 64->128 in
               place of layer2, layer3, layer4 (28 px -> 28, 28, 14, 7).
    """
    if stem not in STEMS:
        raise UserError(f"model.backbone.stem={stem!r} is not one of {STEMS}.")
    net = tv_resnet18(weights=None)
    if pretrained:
        _load_imagenet(net)
    if stem == "imagenet":
        stem_mod = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    else:
        stem_mod = _conv_bn_relu(3, 64)
    layer2 = _conv_bn_relu(64, 128) if stem == "reference" else net.layer2
    return ResNetFeatures(stem_mod, [net.layer1, layer2, net.layer3, net.layer4], stem)


class TinyCNN(nn.Module):
    """Two conv blocks and a pool: a few thousand parameters, so tests train in seconds on a CPU."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.out_dim = 2 * width
        self.net = nn.Sequential(
            _conv_bn_relu(3, width),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(name: str = "resnet18", stem: str = "cifar", pretrained: bool = False) -> nn.Module:
    """The backbone `name` (an output width in `.out_dim`); a clear error for unknown names."""
    if name == "resnet18":
        return resnet18(stem, pretrained)
    if name == "tiny":
        if pretrained:
            raise UserError("model.backbone.name=tiny has no pretrained weights; set model.backbone.pretrained=false.")
        return TinyCNN()
    raise UserError(f"model.backbone.name={name!r} is not one of {', '.join(NAMES)}.")


def _load_imagenet(net: nn.Module) -> None:
    """ImageNet weights from torch hub's cache (downloaded if online); a clear error otherwise."""
    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, progress=False, weights_only=True)
    except Exception as err:  # URLError, socket errors, HTTP errors: all mean "not available"
        hub = torch.hub.get_dir()
        raise UserError(
            f"model.backbone.pretrained=true needs torchvision's ImageNet ResNet-18 weights, which are "
            f"neither cached nor downloadable ({type(err).__name__}: {err}). Copy "
            f"{weights.url.rsplit('/', 1)[-1]} into {hub}/checkpoints/ (or set TORCH_HOME), or train "
            "from scratch with model.backbone.pretrained=false."
        ) from None
    net.load_state_dict(state)
    log.info("loaded ImageNet weights for resnet18")


def check_input_size(name: str, stem: str, size: int) -> None:
    if name == "resnet18" and size < MIN_SIZE[stem]:
        raise UserError(
            f"image size {size} px is too small for model.backbone.stem={stem} (needs >= {MIN_SIZE[stem]} px); "
            "use stem=cifar or stem=reference for 28 px tiles, or a larger data.size."
        )
