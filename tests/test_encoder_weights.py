"""Encoder weights from a safetensors file, checked against a timm architecture; pickles refused (issue 18)."""

from __future__ import annotations

import pickle

import pytest
import safetensors.torch as st
import torch

from sslpath.core.errors import UserError
from sslpath.models.backbones import build
from sslpath.models.encoder_weights import load_encoder, read_safetensors

ARCH = "test_resnet"  # timm's own tiny test model: about 0.4 M numbers


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> dict:
    """A tiny timm encoder with its own random weights saved as safetensors, and its output on a batch."""
    torch.manual_seed(0)
    net = build(f"timm/{ARCH}", stem="imagenet", pretrained=False).eval()
    path = tmp_path_factory.mktemp("weights") / "encoder.safetensors"
    st.save_file(net.state_dict(), path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        return {"path": path, "state": net.state_dict(), "x": x, "features": net(x)}


def test_loads_the_weights_it_was_given(encoder):
    torch.manual_seed(1)  # a fresh build would draw other weights
    net = load_encoder(ARCH, encoder["path"]).eval()
    for key, value in net.state_dict().items():
        assert torch.equal(value, encoder["state"][key]), key
    with torch.no_grad():
        assert torch.equal(net(encoder["x"]), encoder["features"])
    assert load_encoder(f"timm/{ARCH}", encoder["path"]).out_dim == encoder["features"].shape[1]


def test_classifier_head_keys_are_skipped(encoder, tmp_path):
    import timm

    with_head = timm.create_model(ARCH, num_classes=7)
    with_head.load_state_dict(encoder["state"], strict=False)
    path = tmp_path / "with_head.safetensors"
    st.save_file(with_head.state_dict(), path)
    net = load_encoder(ARCH, path).eval()
    with torch.no_grad():
        assert torch.equal(net(encoder["x"]), encoder["features"])


def test_pickles_are_refused_without_being_unpickled(encoder, tmp_path):
    zipped = tmp_path / "encoder.pth"
    torch.save(encoder["state"], zipped)
    with pytest.raises(UserError, match=r"is a PyTorch zip archive .* sslpath reads encoder weights only from safetensors"):
        load_encoder(ARCH, zipped)

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    bare = tmp_path / "encoder.ckpt"
    bare.write_bytes(pickle.dumps({"w": Payload()}, protocol=4))
    with pytest.raises(UserError, match=r"is a Python pickle .* Convert it once where you trust the file"):
        read_safetensors(bare)
    assert not (tmp_path / "pwned").exists()
    legacy = tmp_path / "legacy.pt"
    torch.save(encoder["state"], legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match="is a Python pickle"):
        read_safetensors(legacy)


def test_a_wrong_architecture_is_listed(encoder):
    with pytest.raises(UserError) as err:
        load_encoder("resnet10t", encoder["path"])
    message = str(err.value)
    assert f"{encoder['path']} does not fit timm/resnet10t" in message
    assert "6 unexpected keys: layer3.0.bn3.bias, " in message  # test_resnet has a third conv in layer3, resnet10t none
    assert "70 shape mismatches: conv1.0.weight: file [16, 3, 3, 3] vs model [24, 3, 3, 3], " in message
    assert "… and 62 more" in message  # 8 listed per kind


def test_renamed_keys_and_bad_values_are_listed(encoder, tmp_path):
    state = {f"module.{k}": v for k, v in encoder["state"].items()}
    st.save_file(state, tmp_path / "prefixed.safetensors")
    listed = r"90 missing keys: conv1\.0\.weight, .*; 90 unexpected keys: module\.bn1\.bias, .* 'module\.'"
    with pytest.raises(UserError, match=listed):
        load_encoder(ARCH, tmp_path / "prefixed.safetensors")
    state = dict(encoder["state"])
    state["conv1.0.weight"] = state["conv1.0.weight"].clone()
    state["conv1.0.weight"][0, 0, 0, 0] = float("nan")
    state["bn1.running_mean"] = state["bn1.running_mean"].long()
    st.save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(
        UserError,
        match=r"dtype mismatches: bn1\.running_mean: file int64 vs model float32; 1 NaN or infinite values in: conv1\.0\.weight",
    ):  # noqa: E501
        load_encoder(ARCH, tmp_path / "bad.safetensors")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is not a safetensors file"),
        (b"hello world, not weights", "is not a safetensors file"),
        ((10**12).to_bytes(8, "little") + b"{}", "is not a safetensors file"),  # a header longer than the file
        (b"\x93NUMPY\x01\x00" + b"\x00" * 64, "is not a safetensors file"),
    ],
)
def test_other_files_are_refused(tmp_path, content, message):
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_safetensors(path)


def test_truncated_and_missing_files(encoder, tmp_path):
    data = encoder["path"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="is a damaged or truncated safetensors file"):
        read_safetensors(cut)
    with pytest.raises(UserError, match="no such file"):
        read_safetensors(tmp_path / "absent.safetensors")
