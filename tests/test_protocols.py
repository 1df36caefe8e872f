"""evaluate protocol=knn|linear|fewshot on cached frozen features, for an sslpath checkpoint and for a public
timm encoder read from safetensors (sslpath.evaluation.protocols, feature_cache, fewshot)."""

from __future__ import annotations

import json
import logging

import pytest
import safetensors.torch as st
import torch

from sslpath.core.errors import UserError
from sslpath.evaluation import encoders
from sslpath.evaluation.protocols import run as evaluate
from sslpath.training.fit import train

from factories import TINY_DATA, compose_cfg, compose_evaluate, run_command

SYNTHETIC = [o for o in TINY_DATA if not o.startswith(("data.size", "data.batch_size"))]
SMALL = {  # a few seconds on two cores
    "knn": ["protocol.k=[1,3,10]"],
    "linear": ["protocol.label_fractions=[0.25,1.0]", "protocol.seeds=3", "protocol.l2=[1e-3,1e-1]", "protocol.max_iter=200"],
    "fewshot": ["protocol.shots=[1,2,4]", "protocol.seeds=10", "protocol.max_iter=100"],
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train(compose_cfg(out, ["model=baseline", "report=false"]))["ckpt_path"]


def run(tmp_path, source, protocol, *overrides, out="out"):
    return evaluate(
        compose_evaluate(
            *source,
            *SYNTHETIC,
            f"protocol={protocol}",
            *SMALL[protocol],
            f"out={tmp_path / out}",
            "device=cpu",
            f"features.cache_dir={tmp_path / 'cache'}",
            *overrides,
        )
    )


def count_extractions(monkeypatch) -> list[int]:
    calls = []
    real = encoders.extract_splits
    monkeypatch.setattr(encoders, "extract_splits", lambda *a: calls.append(1) or real(*a))
    return calls


def test_fewshot_on_a_checkpoint_and_the_cache_is_hit(ckpt, tmp_path, monkeypatch, capsys):
    calls = count_extractions(monkeypatch)
    first = run(tmp_path, [f"ckpt={ckpt}"], "fewshot")
    assert calls == [1] and first["feature_cache"]["hit"] is False
    assert json.loads((tmp_path / "out" / "fewshot.json").read_text()) == first
    assert (tmp_path / "out" / "fewshot.png").stat().st_size > 0
    assert "| centroid | 1 |" in (tmp_path / "out" / "fewshot.md").read_text()
    records = {(r["head"], r["x"]): r for r in first["records"]}
    assert set(records) == {(h, k) for h in ("centroid", "logistic") for k in (1, 2, 4)}
    for r in records.values():
        assert r["n"] == 10 and r["seeds"] == list(range(10)) and r["interval"] == "t over seeds"
        assert r["acc_ci"][0] <= r["acc"] <= r["acc_ci"][1] and r["acc"] == pytest.approx(sum(r["per_seed_acc"]) / 10)
    assert len(set(records["centroid", 1]["per_seed_acc"])) > 1  # the seeds draw different support sets
    assert first["images"] == {"train": 72, "val": 36, "test": 36} and first["model"] == "baseline"

    second = run(tmp_path, [f"ckpt={ckpt}"], "fewshot", out="again")
    assert calls == [1] and second["feature_cache"]["hit"] is True  # no second extraction
    assert second["records"] == first["records"]
    assert "features read from cache" in capsys.readouterr().out


def test_a_changed_input_is_never_read_from_the_cache(ckpt, tmp_path, monkeypatch, caplog):
    calls = count_extractions(monkeypatch)
    local = tmp_path / "model.ckpt"
    local.write_bytes(open(ckpt, "rb").read())
    run(tmp_path, [f"ckpt={local}"], "knn", out="a")
    # other data at the same place (synthetic data: its settings), then a retrained checkpoint at the same path
    with caplog.at_level(logging.WARNING, logger="sslpath.evaluation.feature_cache"):
        changed = run(tmp_path, [f"ckpt={local}"], "knn", "data.test_count=45", out="b")
    assert changed["feature_cache"]["hit"] is False and changed["images"]["test"] == 45 and calls == [1, 1]
    assert "was made from other inputs than this call's: the data changed (sha256 " in caplog.text
    state = torch.load(local, weights_only=True)
    next(v for k, v in state["state_dict"].items() if k.endswith("weight")).mul_(2)
    torch.save(state, local)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sslpath.evaluation.feature_cache"):
        run(tmp_path, [f"ckpt={local}"], "knn", "data.test_count=45", out="c")
    assert calls == [1, 1, 1] and "the encoder (checkpoint or weights file) changed (sha256 " in caplog.text
    cache = next((tmp_path / "cache").iterdir())
    cache.write_bytes(b"damaged")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sslpath.evaluation.feature_cache"):
        run(tmp_path, [f"ckpt={local}"], "knn", "data.test_count=45", out="d")
    assert calls == [1, 1, 1, 1] and "is unreadable" in caplog.text


def test_knn_and_linear_records_carry_intervals(ckpt, tmp_path):
    knn = run(tmp_path, [f"ckpt={ckpt}"], "knn", out="knn")
    assert [r["x"] for r in knn["records"]] == [1, 3, 10]
    for r in knn["records"]:
        assert r["interval"] == "bootstrap over test tiles" and r["acc_ci"][0] <= r["acc"] <= r["acc_ci"][1]
        assert 0 <= r["val_acc"] <= 1 and r["auc_ci"] is not None
    linear = run(tmp_path, [f"ckpt={ckpt}"], "linear", out="linear")
    part, full = linear["records"]
    assert (part["x"], part["n"], part["interval"]) == (0.25, 3, "t over seeds")
    assert (full["x"], full["n"], full["interval"]) == (1.0, 1, "bootstrap over test tiles") and full["l2"] in (1e-3, 1e-1)
    assert full["labels_per_class"] == pytest.approx(72 / len(linear["class_names"]))


@pytest.mark.parametrize("protocol", ["knn", "linear", "fewshot"])
def test_a_public_encoder_from_safetensors_runs_every_protocol(timm_weights, tmp_path, protocol):
    result = run(
        tmp_path, ["encoder.name=timm/test_resnet", f"encoder.weights={timm_weights}", "encoder.image_size=32"], protocol
    )
    assert result["model"] == "timm/test_resnet" and result["preprocessing"]["image_size"] == 32
    assert result["encoder"]["sha256"] and result["records"] and all(0 <= r["acc"] <= 1 for r in result["records"])


@pytest.mark.slow  # a CLI process (the exit status and the encoder= shorthand are the point)
def test_a_pickle_as_encoder_weights_is_refused_with_exit_2(timm_weights, tmp_path):
    pth = tmp_path / "encoder.pth"
    torch.save(st.load_file(timm_weights), pth)
    args = ["encoder=timm/test_resnet", f"encoder.weights={pth}", "protocol=knn", *SYNTHETIC, f"out={tmp_path / 'o'}"]
    result = run_command(*args, cwd=tmp_path, module="sslpath.evaluate")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "is a PyTorch zip archive (torch.save: .pt/.pth/.ckpt), holding a pickle" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()


def test_pickle_wrong_architecture_and_uncached_weights_are_named(timm_weights, tmp_path, monkeypatch):
    pth = tmp_path / "encoder.pth"
    torch.save(st.load_file(timm_weights), pth)
    with pytest.raises(UserError, match=r"encoder.pth is a PyTorch zip archive .* holding a pickle, which loading could"):
        run(tmp_path, ["encoder.name=timm/test_resnet", f"encoder.weights={pth}", "encoder.image_size=32"], "knn")
    with pytest.raises(UserError, match=r"does not fit timm/resnet10t: .*unexpected keys: .*shape mismatches"):
        run(tmp_path, ["encoder.name=timm/resnet10t", f"encoder.weights={timm_weights}", "encoder.image_size=32"], "knn")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    with pytest.raises(UserError, match=r"not in the local cache .* only the cache is read, never the network"):
        run(tmp_path, ["encoder.name=timm/test_resnet", "encoder.image_size=32"], "knn")


def test_encoder_shorthand_sets_the_encoders_name(tmp_path):
    result = run_command(
        "encoder=timm/resnet10t", "encoder.weights=w.safetensors", "--cfg", "job", cwd=tmp_path, module="sslpath.evaluate"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    encoder = result.stdout.split("\nencoder:\n", 1)[1]
    assert "  name: timm/resnet10t\n" in encoder and "  weights: w.safetensors\n" in encoder


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["protocol=fewshot", "protocol.seeds=1"], r"protocol.seeds=1 is not valid: it must be an integer >= 2"),
        (["protocol=fewshot", "protocol.shots=[0,4]"], r"protocol.shots=\[0, 4\] is not valid"),
        (["protocol=knn", "protocol.temperature=0"], r"protocol.temperature=0 is not valid"),
        (["protocol=knn", "encoder.name=resnet50"], r"encoder.name='resnet50' is not valid: it must be timm/<name>"),
        (["protocol=knn", "encoder.name=timm/test_resnet"], r"both ckpt=.* and encoder=timm/test_resnet are set"),
        (["encoder.name=timm/test_resnet", "~ckpt"], r"add protocol=knn, protocol=linear or protocol=fewshot"),
        (["protocol=linear", "split=val"], r"split=val cannot be combined with protocol=linear"),
        (["protocol=knn", "data.label_fraction=0.5"], r"data.label_fraction=0.5 cannot be combined with protocol=knn"),
        (["protocol=fewshot", "protocol.shots=[100]"], r"asks for 100 shots per class, but class \d has \d+ labelled"),
    ],
)
def test_bad_protocol_settings_are_refused_before_any_work(ckpt, tmp_path, monkeypatch, overrides, message):
    calls = count_extractions(monkeypatch)
    cfg = compose_evaluate(f"ckpt={ckpt}", *SYNTHETIC, f"out={tmp_path / 'o'}", *overrides)
    with pytest.raises(UserError, match=message):
        evaluate(cfg)
    assert calls == [] and not (tmp_path / "o").exists()


def test_default_evaluate_is_unchanged_without_a_protocol(ckpt, tmp_path):
    metrics = evaluate(compose_evaluate(f"ckpt={ckpt}", *SYNTHETIC, f"out={tmp_path / 'o'}", "report=false", "device=cpu"))
    assert "test_acc" in metrics and not list((tmp_path / "o").glob("*.png"))


def test_knn_sweep_by_hand_and_as_the_monitor():
    """One top-k search serves every k: k=1 is the nearest neighbour's label; each k's accuracy is the
    SSL runs' kNN monitor's."""
    import torch.nn.functional as F

    from sslpath.evaluation.protocols import knn_trials
    from sslpath.models.knn import WeightedKNN

    gen = torch.Generator().manual_seed(0)
    bank, labels = torch.randn(50, 8, generator=gen), torch.randint(0, 3, (50,), generator=gen)
    query, truth = torch.randn(20, 8, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    trials = knn_trials({"train": (bank, labels), "val": (query, truth), "test": (query, truth)}, 3, [1, 5, 20], 0.1)
    nearest = labels[(F.normalize(query, dim=1) @ F.normalize(bank, dim=1).T).argmax(1)]
    assert (trials[0]["probs"].argmax(1) == nearest.numpy()).all() and (trials[0]["probs"].max(1) == 1).all()
    for trial, k in zip(trials, [1, 5, 20]):
        monitor = WeightedKNN(k, 0.1, 3)
        monitor.update(train_feats=bank, train_labels=labels, test_feats=query, test_labels=truth)
        assert trial["val_acc"] == pytest.approx(float(monitor.compute()))
