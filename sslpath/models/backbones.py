"""Feature extractors for small tiles: torchvision's ResNet-18/50 with small-tile stems, any timm model
(`timm/<name>`), and a tiny CNN for tests and smoke runs. `build` is what configs and checkpoints name;
`is_known` is the closed set of names a checkpoint may carry (names looked up in registries, never code)."""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import re
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models import resnet50 as tv_resnet50

from sslpath.core.errors import UserError

log = logging.getLogger(__name__)

NAMES = ("resnet18", "resnet50", "tiny")
TIMM_PREFIX = "timm/"  # timm/<name>: any model in timm's registry, e.g. timm/resnet10t, timm/vit_small_patch16_224
NAMES_HELP = f"{', '.join(NAMES)}, or timm/<name> for a name in timm.list_models()"
STEMS = ("cifar", "imagenet", "reference")
# Smallest input each stem can take: below it the last stage's feature map shrinks to nothing.
MIN_SIZE = {"cifar": 8, "reference": 8, "imagenet": 32}
_TORCHVISION = {"resnet18": (tv_resnet18, ResNet18_Weights), "resnet50": (tv_resnet50, ResNet50_Weights)}
# What a timm name may look like: registry names and their pretrained tags (resnet18.a1_in1k). No ':' or
# '/' (timm's hf-hub:/local-dir: sources), no '$', '{', '-' or spaces: a registry key, never a path or code.
_TIMM_NAME = re.compile(r"[a-z0-9_.]+")
# A ViT's token grid below this many patches a side is too coarse to be worth training (see _note_patch_grid).
MIN_GRID = 4


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _small_tile_stem(net: nn.Module) -> None:
    """Swap a ResNet's stride-4 stem (7×7/2 conv + max-pool, or timm's deep 3-conv variant) for a 3×3
    stride-1 conv and no pool, so a 28 px tile enters the first stage at 28×28 rather than 7×7.

    torchvision and timm ResNets both name the parts conv1, bn1, maxpool; bn1 is reset because the
    statistics of pretrained weights belong to the old conv.
    """
    width = net.bn1.num_features
    net.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
    net.bn1.reset_parameters()
    net.maxpool = nn.Identity()


def stems_for(name: str) -> tuple[str, ...]:
    """The stems `name` can be built with: `reference` is a ResNet-18 design (the tiny CNN ignores stems)."""
    return STEMS if name in ("resnet18", "tiny") else ("cifar", "imagenet")


def _check_stem(name: str, stem: str) -> None:
    if stem not in STEMS:
        raise UserError(f"model.backbone.stem={stem!r} is not one of {STEMS}.")
    if stem not in stems_for(name):
        raise UserError(
            f"model.backbone.stem={stem} is the reference notebook's ResNet-18 design and only applies to "
            f"model.backbone.name=resnet18, not {name}; use stem=cifar (small tiles) or stem=imagenet."
        )


class ResNetFeatures(nn.Module):
    """Stem + stages + global average pool -> (N, out_dim) features."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], stem_name: str, out_dim: int = 512) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.stem_name = stem_name
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


def _torchvision_resnet(name: str, stem: str, pretrained: bool) -> ResNetFeatures:
    """torchvision's ResNet `name` with a stem for small inputs.

    cifar:     3×3 stride-1 conv, no max-pool (28 px -> 28, 14, 7, 4).
    imagenet:  torchvision's 7×7 stride-2 conv + max-pool (meant for >= 64 px).
    reference: (resnet18 only) the notebook's design: 3×3 stride-1 stem, layer1, a stride-1 3×3 conv
               64->128 in place of layer2, layer3, layer4 (28 px -> 28, 28, 14, 7).
    """
    _check_stem(name, stem)
    constructor, weights = _TORCHVISION[name]
    net = constructor(weights=None)
    if pretrained:
        _load_imagenet(net, name, weights.DEFAULT)
    if stem != "imagenet":
        _small_tile_stem(net)
    layer2 = _conv_bn_relu(64, 128) if stem == "reference" else net.layer2
    stem_mod = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return ResNetFeatures(stem_mod, [net.layer1, layer2, net.layer3, net.layer4], stem, out_dim=net.fc.in_features)


def resnet18(stem: str = "cifar", pretrained: bool = False) -> ResNetFeatures:
    """torchvision ResNet-18 (512 features) with a small-tile stem; see `_torchvision_resnet`."""
    return _torchvision_resnet("resnet18", stem, pretrained)


def resnet50(stem: str = "cifar", pretrained: bool = False) -> ResNetFeatures:
    """torchvision ResNet-50 (2048 features) with a small-tile stem; see `_torchvision_resnet`."""
    return _torchvision_resnet("resnet50", stem, pretrained)


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


def build(name: str = "resnet18", stem: str = "cifar", pretrained: bool = False, image_size: int | None = None) -> nn.Module:
    """The backbone `name` (an output width in `.out_dim`); a clear error for unknown names.

    image_size: the tile size. timm models with a fixed input size (ViTs) are built for it, and every
    timm model is checked against it; torchvision ResNets and the tiny CNN take any size.
    """
    if name in _TORCHVISION:
        return _torchvision_resnet(name, stem, pretrained)
    if name == "tiny":
        _check_stem(name, stem)
        if pretrained:
            raise UserError("model.backbone.name=tiny has no pretrained weights; set model.backbone.pretrained=false.")
        return TinyCNN()
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        return _timm_model(name, stem, pretrained, image_size)
    hint = ""
    if isinstance(name, str) and _TIMM_NAME.fullmatch(name) and name in _timm_names():
        hint = f" timm has a model of that name: model.backbone.name={TIMM_PREFIX}{name}."
    raise UserError(f"model.backbone.name={name!r} is not one of {NAMES_HELP}.{hint}")


def is_known(name: object) -> bool:
    """Whether `name` names a backbone `build` makes: one of NAMES, or timm/ and a name in timm's registry.

    This is what a checkpoint's metadata may name. The shape check comes first, so a string such as
    `timm/os.system`, `timm/../x` or `timm/${…}` is refused before timm is imported or asked about it.
    """
    if not isinstance(name, str):
        return False
    if name in NAMES:
        return True
    arch = name.removeprefix(TIMM_PREFIX)
    return arch != name and bool(_TIMM_NAME.fullmatch(arch)) and arch in _timm_names()


def _import_timm() -> ModuleType:
    """timm, imported only when a timm backbone is asked for (it takes seconds)."""
    try:
        import timm
    except ImportError:
        raise UserError("model.backbone.name=timm/… needs the timm package: pip install 'timm>=1.0,<1.1'.") from None
    return timm


@functools.cache
def _timm_names() -> frozenset[str]:
    """timm's registry: architectures (resnet18) and architectures with a weights tag (resnet18.a1_in1k)."""
    timm = _import_timm()
    return frozenset(timm.list_models()) | frozenset(timm.list_models(pretrained=True))


def _timm_model(name: str, stem: str, pretrained: bool, image_size: int | None) -> nn.Module:
    """timm's model as a feature extractor: pooled pre-logits (num_classes=0).

    Built through timm's registry only (create_model looks the name up; it is never a path or a hub
    id). Stems: timm ResNets get the same small-tile stem as torchvision's with stem=cifar; other models
    keep their own. Fixed-size models (ViTs) are built for `image_size`.
    """
    _check_stem(name, stem)
    arch = name.removeprefix(TIMM_PREFIX)
    if not is_known(name):
        raise _unknown_timm(arch)
    timm = _import_timm()
    kwargs = {"img_size": image_size} if image_size and timm.models.get_pretrained_cfg_value(arch, "fixed_input_size") else {}
    try:
        with _hub_offline() if pretrained else contextlib.nullcontext():
            net = timm.create_model(arch, pretrained=pretrained, num_classes=0, **kwargs)
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError, URLError…: weights not in the cache
        raise UserError(
            f"model.backbone.pretrained=true needs timm's ImageNet weights for {arch}, which are not in the local "
            f"cache ({type(err).__name__}; only the cache is read, never the network). On a machine with internet run "
            f"`python -c \"import timm; timm.create_model('{arch}', pretrained=True)\"` and copy its "
            "~/.cache/huggingface here (or set HF_HOME to it), or train from scratch with model.backbone.pretrained=false."
        ) from None
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise UserError(f"timm could not build model.backbone.name={name}{_at(image_size)}: {first}") from None
    if stem == "cifar":
        if isinstance(net, timm.models.ResNet):
            _small_tile_stem(net)
        elif not hasattr(net, "patch_embed"):
            log.info("model.backbone.stem=cifar only changes ResNet stems; %s keeps its own stem", name)
    net.out_dim = _feature_width(net, name, image_size)
    _note_patch_grid(net, name, image_size)
    return net


def _at(image_size: int | None) -> str:
    return f" for {image_size} px tiles" if image_size else ""


def _unknown_timm(arch: str) -> UserError:
    close = difflib.get_close_matches(arch, sorted(_timm_names()), n=3) if _TIMM_NAME.fullmatch(arch) else []
    hint = f" (close: {', '.join(TIMM_PREFIX + c for c in close)})" if close else ""
    return UserError(
        f"model.backbone.name={TIMM_PREFIX}{arch} is not a timm model{hint}. timm names are lowercase letters, "
        "digits, '_' and '.'; list them with "
        "`python -c \"import timm; print(timm.list_models('resnet*'))\"` and use model.backbone.name=timm/<name>."
    )


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub reads its cache only: without it, an offline machine retries for ~45 s per file."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _feature_width(net: nn.Module, name: str, image_size: int | None) -> int:
    """Features per image, from one forward pass at the tile size.

    It refuses tiles too small for the model's downsampling before any training starts, and reads the
    true width: timm's num_features is the pre-head width for models with a head layer (MobileNetV3).
    """
    size = image_size or net.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    training = net.training
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(1, 3, size, size))
    except (RuntimeError, ValueError, AssertionError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(
            f"model.backbone.name={name} cannot take {size} px tiles ({first}): its stem and stages shrink the "
            "tile to nothing. Use a larger data.size, or a timm ResNet with model.backbone.stem=cifar for small tiles."
        ) from None
    finally:
        net.train(training)
    return int(out.shape[-1])


def _note_patch_grid(net: nn.Module, name: str, image_size: int | None) -> None:
    """An honest note when a ViT's patches leave it only a few tokens (28 px with 16 px patches: one)."""
    embed = getattr(net, "patch_embed", None)
    grid, patch = getattr(embed, "grid_size", None), getattr(embed, "patch_size", None)
    if not image_size or not grid or not patch or min(grid) >= MIN_GRID:
        return
    unused = image_size - grid[0] * patch[0]
    log.warning(
        "model.backbone.name=%s at %d px: %d×%d px patches give a %d×%d token grid%s, too coarse for attention "
        "to see tissue structure. Use data.size >= %d (a %d×%d grid) or a ViT with smaller patches "
        "(e.g. timm/vit_small_patch8_224: 3×3 tokens at 28 px).",
        name,
        image_size,
        patch[0],
        patch[1],
        grid[0],
        grid[1],
        f" ({unused} px of each side unused)" if unused else "",
        MIN_GRID * patch[0],
        MIN_GRID,
        MIN_GRID,
    )


def _load_imagenet(net: nn.Module, name: str, weights: ResNet18_Weights | ResNet50_Weights) -> None:
    """ImageNet weights from torch hub's cache (downloaded if online); a clear error otherwise."""
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, progress=False, weights_only=True)
    except Exception as err:  # URLError, socket errors, HTTP errors: all mean "not available"
        hub = torch.hub.get_dir()
        raise UserError(
            f"model.backbone.pretrained=true needs torchvision's ImageNet {name} weights, which are "
            f"neither cached nor downloadable ({type(err).__name__}: {err}). Copy "
            f"{weights.url.rsplit('/', 1)[-1]} into {hub}/checkpoints/ (or set TORCH_HOME), or train "
            "from scratch with model.backbone.pretrained=false."
        ) from None
    net.load_state_dict(state)
    log.info("loaded ImageNet weights for %s", name)


def check_input_size(name: str, stem: str, size: int) -> None:
    """Refuse, before any data is read, a stem the backbone lacks or tiles too small for a torchvision
    ResNet's stem (timm models are checked by a forward pass when built)."""
    _check_stem(name, stem)
    if name in _TORCHVISION and size < MIN_SIZE[stem]:
        raise UserError(
            f"image size {size} px is too small for model.backbone.stem={stem} (needs >= {MIN_SIZE[stem]} px); "
            "use stem=cifar (or, for resnet18, stem=reference) for 28 px tiles, or a larger data.size."
        )


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Build on the meta device: shapes and parameter counts without memory, and without the notes the
    real build logs (a check before it, which would print them twice)."""
    saved, log.disabled = log.disabled, True
    try:
        with torch.device("meta"):
            yield
    finally:
        log.disabled = saved
