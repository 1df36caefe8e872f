"""timm backbones (`model.backbone.name=timm/<name>`): stems, ViTs at small tile sizes, pretrained weights
from the local cache only, an end-to-end run, and checkpoint metadata that may only ever name a model."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from sslpath.core.errors import UserError
from sslpath.models import backbones
from sslpath.models.checkpoint import load_inference_model, read_metadata
from sslpath.training.fit import train

from factories import compose_cfg, read_metrics

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

SMALL = "timm/resnet10t"  # 4.9 M parameters, a timm ResNet: takes the small-tile stem


@pytest.fixture
def no_network(monkeypatch) -> list[Any]:
    """Any attempt to reach the network is recorded and fails at once."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_timm_resnet_gets_the_small_tile_stem():
    net = backbones.build(SMALL, "cifar", image_size=28)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and isinstance(net.maxpool, torch.nn.Identity)
    assert net.forward_features(torch.zeros(2, 3, 28, 28)).shape == (2, 512, 4, 4)  # 28, 14, 7, 4
    assert net.out_dim == 512 and net(torch.zeros(2, 3, 28, 28)).shape == (2, 512)
    own = backbones.build(SMALL, "imagenet", image_size=32)
    assert own.conv1[0].stride == (2, 2) and isinstance(own.maxpool, torch.nn.MaxPool2d)


def test_feature_width_is_measured_not_assumed():
    """MobileNetV3's pooled pre-logits go through a head conv: 1024 wide, not num_features (288)."""
    net = backbones.build("timm/mobilenetv3_small_050", "cifar", image_size=28)
    assert net.num_features != net.out_dim == 1024 and net(torch.zeros(2, 3, 28, 28)).shape == (2, 1024)


def test_vit_is_built_for_the_tile_size_with_an_honest_note(caplog):
    with caplog.at_level(logging.WARNING, logger="sslpath.models.backbones"):
        vit = backbones.build("timm/vit_tiny_patch16_224", "cifar", image_size=32)
    assert vit.patch_embed.img_size == (32, 32) and vit(torch.zeros(2, 3, 32, 32)).shape == (2, vit.out_dim) == (2, 192)
    assert "2×2 token grid" in caplog.text and "data.size >= 64" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sslpath.models.backbones"):
        backbones.build("timm/vit_tiny_patch16_224", "cifar", image_size=28)
    assert "1×1 token grid (12 px of each side unused)" in caplog.text


def test_too_small_tiles_and_bad_names_are_user_errors():
    with pytest.raises(UserError, match="convnext_atto cannot take 28 px tiles.*larger data.size"):
        backbones.build("timm/convnext_atto", "cifar", image_size=28)
    with pytest.raises(UserError, match=r"not a timm model \(close: timm/resnet18.*timm.list_models\('resnet\*'\)"):
        backbones.build("timm/resnt18")
    with pytest.raises(UserError, match="timm has a model of that name: model.backbone.name=timm/resnet34"):
        backbones.build("resnet34")
    with pytest.raises(UserError, match="only applies to model.backbone.name=resnet18, not timm/resnet10t"):
        backbones.build(SMALL, "reference")


def fake_hub_cache(root: Path, repo: str, state: dict[str, torch.Tensor]) -> None:
    """The layout huggingface_hub leaves behind after downloading `repo`'s model.safetensors."""
    commit = "0" * 40
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")


def test_pretrained_loads_from_the_local_cache_only(tmp_path, monkeypatch, no_network):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    reference = timm.create_model("resnet10t", pretrained=False).state_dict()  # with its 1000-class fc
    fake_hub_cache(tmp_path, "timm/resnet10t.c3_in1k", reference)
    net = backbones.build(SMALL, "imagenet", pretrained=True, image_size=32)
    assert torch.equal(net.conv1[0].weight, reference["conv1.0.weight"])
    assert torch.equal(net.layer4[0].conv1.weight, reference["layer4.0.conv1.weight"])
    cifar = backbones.build(SMALL, "cifar", pretrained=True, image_size=28)  # the stages keep their weights
    assert torch.equal(cifar.layer1[0].conv1.weight, reference["layer1.0.conv1.weight"])
    assert no_network == [] and huggingface_hub.constants.HF_HUB_OFFLINE is False  # offline only while loading


def test_pretrained_not_cached_is_a_clear_error_without_network_retries(tmp_path, monkeypatch, no_network):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        UserError,
        match=r"ImageNet weights for convnext_atto \(Hugging Face repo timm/convnext_atto.d2_in1k\), which are not in the "
        r"local cache.*timm.create_model\('convnext_atto', pretrained=True\).*copy its Hugging Face cache folder "
        rf"models--timm--convnext_atto.d2_in1k to {re.escape(str(tmp_path / 'models--timm--convnext_atto.d2_in1k'))} "
        r"here.*pretrained=false",
    ):
        backbones.build("timm/convnext_atto", "imagenet", pretrained=True, image_size=32)
    assert no_network == []


def test_pretrained_from_a_url_reads_torch_hubs_cache_only(tmp_path, monkeypatch, no_network):
    """timm models whose weights live at a URL (no Hugging Face copy) are read from torch hub's cache; a
    missing file names the exact path and URL, and nothing is fetched."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch hub's cache: $TORCH_HOME/hub
    hub = tmp_path / "hub"
    with pytest.raises(
        UserError,
        match=rf"timm's ImageNet weights for gcvit_xxtiny, which are not in torch hub's cache; only the cache is read, "
        rf"never the network. Download https://github.com/\S+/gcvit_xxtiny_224_nvidia-d1d86009.pth .*put it at "
        rf"{re.escape(str(hub / 'checkpoints' / 'gcvit_xxtiny_224_nvidia-d1d86009.pth'))} ",
    ):
        backbones.build("timm/gcvit_xxtiny", "imagenet", pretrained=True, image_size=224)
    reference = timm.create_model("legacy_seresnet18", pretrained=False).state_dict()
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(reference, hub / "checkpoints" / "seresnet18-4bb0ce65.pth")
    net = backbones.build("timm/legacy_seresnet18", "imagenet", pretrained=True, image_size=32)
    assert torch.equal(net.layer4[0].conv1.weight, reference["layer4.0.conv1.weight"])
    assert no_network == []


def test_pretrained_for_a_model_without_weights_is_refused():
    with pytest.raises(UserError, match=r"timm has no pretrained weights for model.backbone.name=timm/botnet50ts_256"):
        backbones.build("timm/botnet50ts_256", "imagenet", pretrained=True, image_size=256)


def test_timm_model_trains_end_to_end_and_reloads(tmp_path):
    sizes = ["data.train_count=48", "data.val_count=24", "data.test_count=24"]  # 16 px tiles, 2 batches of 24, 1 epoch
    train(compose_cfg(tmp_path, ["model=baseline", f"model.backbone.name={SMALL}", *sizes]))
    saved = read_metrics(tmp_path)
    model, meta = load_inference_model(saved["ckpt_path"])
    assert (meta.backbone, meta.stem, meta.image_size) == (SMALL, "cifar", 16)
    assert isinstance(model.backbone.maxpool, torch.nn.Identity) and model(torch.zeros(2, 3, 16, 16)).shape == (2, 9)


# ---- checkpoint metadata: a backbone is a name from a closed set, never code -------------------------


def metadata(**changes: Any) -> dict[str, Any]:
    meta = {
        "kind": "baseline",
        "backbone": "resnet18",
        "stem": "cifar",
        "num_classes": 2,
        "class_names": ["a", "b"],
        "image_size": 28,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.2, 0.2, 0.2],
        "label_fraction": 1.0,
        "seed": 0,
    }
    return {**meta, **changes}


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "tiny", SMALL, "timm/vit_small_patch16_224", "timm/resnet18.a1_in1k"])
def test_metadata_accepts_known_names(name):
    assert read_metadata({"sslpath": metadata(backbone=name)}, "x.ckpt").backbone == name


MALFORMED = [
    "timm/../../x",
    "timm/os.system",
    "timm/os.system('touch marker')",
    "timm/__import__('os')",
    "timm/${oc.env:HOME}",
    "timm/hf-hub:timm/resnet18",
    "timm/local-dir:/tmp",
    "timm/RESNET18",
    "timm/resnet18\n",
    "timm/ resnet18",
    "timm/",
    "timm/timm/resnet18",
    "timm.create_model",
    "sslpath.models.backbones.torch.save",
    "resnet34",
    "vit_small_patch16_224",
    "timm/resnet18.bogus_tag",
    "timm/" + "a" * 10_000,
    18,
    None,
    ["timm/resnet18"],
]


@pytest.mark.parametrize("name", MALFORMED, ids=[repr(n)[:40] for n in MALFORMED])
def test_metadata_refuses_anything_else_before_timm_sees_it(monkeypatch, name):
    backbones._timm_names()  # the registry's names, read once and kept

    def untouchable(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a checkpoint's backbone string reached timm")

    for attr in ("create_model", "list_models", "is_model", "model_entrypoint"):
        monkeypatch.setattr(timm, attr, untouchable)
    monkeypatch.setattr(timm.models, "get_pretrained_cfg_value", untouchable)
    with pytest.raises(UserError, match="refused x.ckpt: its sslpath metadata (has backbone=|holds a config interpolation)"):
        read_metadata({"sslpath": metadata(backbone=name)}, "x.ckpt")


@pytest.mark.parametrize("name", ["resnet50", SMALL, "tiny-typo"])
def test_metadata_refuses_the_reference_stem_outside_resnet18(name):
    with pytest.raises(UserError, match="has (stem='reference'; allowed: cifar, imagenet|backbone=)"):
        read_metadata({"sslpath": metadata(backbone=name, stem="reference")}, "x.ckpt")
