"""The schema of user-set values (sslpath/checks/schema.py) and the relations sslpath.checks.validate checks: every
mistake is refused before any data is read or model built, in one paragraph naming the key, the value
and what is allowed; NaN losses name the setting that caused them; a checkpoint's metadata cannot make
us build more than its weights."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from sslpath.checks.rules import TARGET_KEYS, FilePath, Seq, integer, num, opt
from sslpath.checks.schema import PATHS, TARGETS
from sslpath.checks.validate import accepted_keys, nan_advice, nan_suspects, rows_of_node, target_nodes, validate
from sslpath.core.errors import UserError
from sslpath.data.folder import TileFolder
from sslpath.models import checkpoint as checkpoints
from sslpath.models.checkpoint import load_inference_model
from sslpath.models.optim import OptimizerSettings
from sslpath.training import fit as train
from sslpath.training.build import NOT_MODEL_ARGS
from sslpath.training.callbacks import NonFiniteLoss

from factories import compose_cfg, make_tiles

CONF = Path(__file__).parents[1] / "conf"
NARROW = ["model.projector_dims=[16,8]"]  # a small SimCLR head for runs that train
PRE_NARROW = ["pretrain.projector_dims=[16,8]"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def shipped_configs() -> list[list[str]]:
    """Every option of every group a user picks from, several groups per composition (option i of each)."""
    groups = {g: options(g) for g in ("model", "data", "optimizer", "scheduler", "callbacks", "logger", "trainer")}
    groups["augment"] = options("augment")
    combos = []
    for i in range(max(map(len, groups.values()))):
        combo = [f"{g}={o[i % len(o)]}" for g, o in groups.items() if g != "augment"]
        augment = groups["augment"][i % len(groups["augment"])]
        combos.append([*combo, f"augment@augment.train={augment}", f"augment@augment.ssl={augment}"])
    alone = [f"{g}={o}" for g in ("debug", "experiment") for o in options(g)]  # debug=fdr refuses chains
    return [*combos, *([a] for a in alone), ["hparams_search=optuna"]]


def leaves(node: DictConfig, prefix: str = ""):
    """Keys of a `_target_` node down to its values (not into child `_target_` nodes)."""
    for key in node:
        if key in TARGET_KEYS:
            continue
        plain = not (OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key))
        if plain and isinstance(node[key], DictConfig) and "_target_" not in node[key]:
            yield from leaves(node[key], f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def plain_leaves(node: DictConfig, prefix: str = ""):
    """Values outside every `_target_` node (train.yaml's own keys, paths/…)."""
    for key in node:
        if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            yield f"{prefix}{key}"
        elif isinstance(node[key], DictConfig):
            if "_target_" not in node[key]:
                yield from plain_leaves(node[key], f"{prefix}{key}.")
        elif not isinstance(node[key], DictConfig):
            yield f"{prefix}{key}"


@pytest.mark.slow  # 20 compositions
def test_every_shipped_setting_has_a_schema_row_and_passes_it(tmp_path):
    missing = set()
    for combo in shipped_configs():
        needs_dir = {"data=folder", "data=stream"} & set(combo)  # their data.dir is mandatory
        cfg = compose_cfg(tmp_path, [*combo, *(["data.dir=tiles"] if needs_dir else [])], tiny=False)
        for path, node in target_nodes(cfg, ""):
            rows = rows_of_node(node, path)
            missing |= {f"{node._target_}: {leaf}" for leaf in leaves(node) if leaf not in rows}
        # the corruption suite of experiment=robustness has its own checks (corruptions.load_suite)
        missing |= {leaf for leaf in plain_leaves(cfg) if leaf not in PATHS and not leaf.startswith("robustness.")}
        if "trainer=ddp" not in combo:  # sync_batchnorm: GPUs only
            validate(cfg)
    assert not missing, sorted(missing)


@pytest.mark.parametrize("ours", [pytest.param(True), pytest.param(False, marks=pytest.mark.slow)])  # slow: imports optuna
def test_every_schema_row_names_a_real_parameter(ours):
    """A renamed or removed parameter (another helper's model change) fails here, not silently."""
    for name, params in TARGETS.items():
        if name.startswith("sslpath.") != ours:
            continue
        obj = get_object(name)
        known = accepted_keys(obj)
        if known is None:
            continue
        extra = set(NOT_MODEL_ARGS) if name.startswith("sslpath.models.") else set()
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer):  # sslpath's own keys, taken off first
            extra |= {f.name for f in dataclasses.fields(OptimizerSettings)}
        stray = {key.split(".")[0] for key in params.rows} - known - extra
        assert not stray, f"{name}: {stray}"


@pytest.mark.parametrize(
    "rule, good, bad",
    [
        (num(0, 1, open_low=True), [1, 0.5], [0, 1.5, float("nan"), float("inf"), True, "0.5", None]),
        (integer(1), [1, 10**9], [0, 1.0, True, "3"]),
        (Seq(integer(1), 2, 2, ordered=True), [[1, 2], [3, 3]], [[2, 1], [1], [1, 2, 3], "12"]),
        (opt(FilePath()), [None, "a/b", "~/x"], ["", 2024, "a" * 256, "a/" * 2100, "a\0b"]),
    ],
)
def test_rules(rule, good, bad):
    assert all(rule.ok(v) for v in good) and not any(rule.ok(v) for v in bad)


LONG = "N" * 300
# overrides -> the start of the one-paragraph message (each found by validate, before data or model)
BAD = {
    "projector width 0": (
        ["model=simclr", "model.projector_dims=[0]"],
        "model.projector_dims=[0] is not valid: it must be a list",
    ),
    "projector astronomically wide": (
        ["model=simclr", "model.projector_dims=[1000000,1000000]"],
        "Use smaller widths: model.projector_dims=[1000000, 1000000]",
    ),
    "one view for SimCLR": (
        ["model=simclr", *NARROW, "model.input.views=1"],
        "model.input.views=1 is not valid: it must be exactly 2",
    ),
    "two views for the baseline": (["model.input.views=2"], "model.input.views=2 is not valid: it must be exactly 1"),
    "ViT built for another size": (
        ["model.backbone.name=timm/vit_tiny_patch16_224", "model.backbone.image_size=32"],
        "model.backbone.image_size=32 but data.size=16",
    ),
    "early stopping on an unlogged metric": (
        ["callbacks=early_stopping", "callbacks.early_stopping.monitor=val/foo"],
        "callbacks.early_stopping.monitor=val/foo is not a metric that Supervised logs",
    ),
    "checkpoint on kNN accuracy without kNN": (
        ["model=simclr", *NARROW, "model.knn_k=0", "callbacks.model_checkpoint.monitor=val/knn_acc"],
        "callbacks.model_checkpoint.monitor=val/knn_acc is not a metric that SimCLR logs",
    ),
    "optimized kNN accuracy without kNN": (
        ["model=simclr", *NARROW, "model.knn_k=0", "optimized_metric=val/knn_acc"],
        "optimized_metric=val/knn_acc is not a validation metric that SimCLR logs (val/knn_acc needs model.knn_k > 0)",
    ),
    "validation never runs": (["trainer.check_val_every_n_epoch=5"], "trainer.check_val_every_n_epoch=5 > trainer.max_epochs=1"),
    "supervised chain stage": (["model=finetune", "model@pretrain=baseline"], "model@pretrain chose a baseline model"),
    "fine-tune as chain stage": (["model=finetune", "model@pretrain=finetune"], "model@pretrain chose a finetune model"),
    "chain under fast_dev_run": (["model=finetune", "debug=fdr"], "debug=fdr (trainer.fast_dev_run=True) writes no checkpoint"),
    "BYOL momentum > 1": (
        ["model=byol", "model.momentum_start=1.5"],
        "model.momentum_start=1.5 is not valid: it must be a number >= 0 and <= 1",
    ),
    "momentum start above end": (
        ["model=byol", "model.momentum_start=0.9", "model.momentum_end=0.5"],
        "model.momentum_start=0.9 is above model.momentum_end=0.5",
    ),
    "SGD momentum > 1": (["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum=1.5 is not valid"),
    "nesterov without momentum": (
        ["optimizer=sgd", "optimizer.momentum=0"],
        "optimizer.nesterov=true needs optimizer.momentum > 0",
    ),
    "negative HED alpha": (
        ["augment@augment.ssl=pathology", "augment.ssl.ops.4.alpha=-1"],
        "augment.ssl.ops.4.alpha=-1 is not valid: it must be a number >= 0 and < 1",
    ),
    "infinite HED shift": (["augment@augment.train=pathology", "augment.train.ops.4.beta=inf"], "augment.train.ops.4.beta=inf"),
    "hue out of range": (["augment@augment.train=simclr", "augment.train.ops.3.hue=0.9"], "augment.train.ops.3.hue=0.9"),
    "negative DINO student_temp": (
        ["model=dino", "model.student_temp=-0.1"],
        "model.student_temp=-0.1 is not valid: it must be a finite number > 0",
    ),
    "temperature 0": (["model=simclr", "model.temperature=0"], "model.temperature=0 is not valid"),
    "chain stage temperature 0": (["model=finetune", "pretrain.temperature=0"], "pretrain.temperature=0 is not valid"),
    "lr inf": (["optimizer.lr=inf"], "optimizer.lr=inf is not valid: it must be a finite number > 0"),
    "unknown parameter": (["+model.foo=1"], "model.foo is not a setting of sslpath.models.supervised.Supervised"),
    "unknown trainer parameter": (["+trainer.fooo=1"], "trainer.fooo is not a setting of lightning.pytorch.Trainer"),
    "checkpoint mode": (
        ["callbacks.model_checkpoint.mode=up"],
        "callbacks.model_checkpoint.mode='up' is not valid: it must be one of min, max",
    ),
    "no training batches": (
        ["+trainer.limit_train_batches=0"],
        "trainer.limit_train_batches=0 is not valid: it must be an integer >= 1 or a number > 0 and <= 1",
    ),
    "accumulate 0": (["+trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 is not valid"),
    "sync_batchnorm on the CPU": (
        ["trainer=ddp", "trainer.accelerator=cpu"],
        "trainer.sync_batchnorm=true (trainer=ddp) needs GPUs",
    ),
    "synthetic count past memory": (["data.train_count=10000000000"], "need about"),
    "data path past the name limit": ([f"data.path=/tmp/{LONG}.npz"], f"data.path='/tmp/{LONG[:50]}"),
    "ckpt_path past the name limit": ([f"ckpt_path=/tmp/{LONG}.ckpt"], "ckpt_path='/tmp/NNN"),
    "data dir as a number": (["data=folder", "data.dir=2024"], "data.dir=2024 is not valid: it must be a path"),
    "data dir missing": (["data=folder"], "data.dir is required but not set"),
    "flag as a list": (["data=medmnist", "data.flag=[a,b]"], "data.flag=['a', 'b'] is not valid: it must be a MedMNIST flag"),
    "robustness blur past the tile": (
        ["experiment=robustness", "robustness.params.defocus_blur=[[1,0.5],[2,0.5],[3,0.5],[4,0.5],[1e9,0.5]]"],
        "reaches 1e+09 px, wider than the largest tile sslpath trains on (1024 px",
    ),
}
NOT_TINY_DATA = {"flag as a list", "data dir as a number", "data dir missing", "data path past the name limit"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_values_are_refused_before_data_or_model(tmp_path, case, monkeypatch):
    overrides, message = BAD[case]
    tiny = case not in NOT_TINY_DATA
    cfg = compose_cfg(tmp_path, [*overrides, *([] if tiny else ["model.backbone.name=tiny", "data.size=16"])], tiny=tiny)

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the settings were checked")

    monkeypatch.setattr("sslpath.data.datamodule.ArrayDataModule.setup", no_data)
    with pytest.raises(UserError) as err:
        validate(cfg)
    text = str(err.value)
    assert message in text, text
    assert "\n" not in text


def test_a_chain_whose_label_fraction_empties_a_class_is_refused_before_its_stage(tmp_path):
    cfg = compose_cfg(tmp_path, ["model=finetune", *PRE_NARROW, "data.label_fraction=0.01"])
    with pytest.raises(UserError, match="data.label_fraction=0.01 keeps no label of class"):
        train.train(cfg)
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.json"))  # no SSL stage trained


# ----------------------------------------------------------------------------------------------
# NaN losses


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["model=simclr", *NARROW, "model.temperature=1e-40"], "Likely cause: model.temperature=1e-40 (usually from 0.01 to 10)"),
        (["optimizer.lr=1e30", "trainer.max_epochs=2"], "Likely cause: optimizer.lr=1e+30 (usually at most 1)"),
    ],
)
def test_a_nan_loss_names_the_setting_that_caused_it(tmp_path, overrides, named):
    with pytest.raises(UserError) as err:
        train.train(compose_cfg(tmp_path, overrides))
    assert "the training loss became nan" in str(err.value) and named in str(err.value)
    assert "Lower the learning rate" not in str(err.value)


def test_a_chain_stage_nan_names_the_pretrain_setting(tmp_path):
    cfg = compose_cfg(tmp_path, ["model=finetune", *PRE_NARROW, "pretrain.temperature=1e-40"])
    with pytest.raises(UserError, match=re.escape("Likely cause: pretrain.temperature=1e-40")):
        train.train(cfg)


def test_nan_advice_without_a_suspect_gives_the_usual_remedies(tmp_path):
    cfg = compose_cfg(tmp_path)
    assert nan_suspects(cfg) == []
    with pytest.raises(UserError) as err, nan_advice(cfg):
        raise NonFiniteLoss(float("nan"), 3, 40, "last.ckpt")
    text = str(err.value)
    assert text.startswith("the training loss became nan at epoch 3, step 40. No setting is outside its usual range")
    assert "optimizer.lr=0.001" in text and text.endswith("The last good checkpoint is kept: last.ckpt.")
    fp16 = compose_cfg(tmp_path, ["trainer.precision=16-mixed", "augment@augment.train=pathology"])
    assert nan_suspects(fp16) == ["trainer.precision=16-mixed (float16 overflows above 65504: use bf16-mixed or 32-true)"]


# ----------------------------------------------------------------------------------------------
# Checkpoints: metadata cannot make us build more than the weights


META = {
    "kind": "baseline",
    "backbone": "timm/vit_large_patch16_224",
    "stem": "imagenet",
    "num_classes": 2,
    "class_names": ["a", "b"],
    "image_size": 224,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "label_fraction": 1.0,
    "seed": 0,
    "format": 3,
}


def test_a_small_checkpoint_naming_a_huge_architecture_is_refused_unbuilt(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    import timm

    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {"head.weight": torch.zeros(2, 1024), "head.bias": torch.zeros(2)}, "sslpath": META}, path)
    assert path.stat().st_size < 30_000
    real_create = timm.create_model
    built = []

    def meta_only(*args, **kwargs):
        net = real_create(*args, **kwargs)
        built.append(next(net.parameters()).device.type)
        assert built[-1] == "meta", "the architecture was built with real memory before its weights were checked"
        return net

    monkeypatch.setattr(timm, "create_model", meta_only)
    with pytest.raises(UserError) as err:
        load_inference_model(path)
    assert built == ["meta"]
    assert "do not fit (294 missing: backbone.cls_token" in str(err.value)
    assert "the model holds 303,303,682 values, the file 2,050)" in str(err.value)


def test_tensors_that_claim_more_than_the_file_stores_are_refused(tmp_path):
    path = tmp_path / "views.ckpt"
    torch.save({"state_dict": {"backbone.w": torch.zeros(1).expand(1000, 1000)}, "sslpath": META}, path)
    with pytest.raises(UserError, match="its weights claim 4,000,000 bytes of values but the file stores 4"):
        checkpoints.load_checkpoint(path)
    tied = torch.ones(3, 3)
    torch.save({"state_dict": {"a": tied, "b": tied}}, tmp_path / "tied.ckpt")
    checkpoints.load_checkpoint(tmp_path / "tied.ckpt")  # one tensor under two names is stored once: fine


def test_an_unusable_checkpoint_path_exits_2(tmp_path):
    with pytest.raises(UserError, match="is not a usable path"):
        checkpoints.load_checkpoint(tmp_path / ("x" * 300), "ckpt")


# ----------------------------------------------------------------------------------------------
# Folder scans


def test_a_folder_nested_1100_deep_is_walked(tmp_path):
    root = tmp_path / "tiles"
    make_tiles(root, {"adipose": 3, "mucus": 3})
    deep = root / "mucus"
    levels = []
    for _ in range(1100):  # level by level: mkdir(parents=True) recurses itself
        deep = deep / "d"
        deep.mkdir()
        levels.append(deep)
    (root / "mucus" / "tile0.png").rename(deep / "tile0.png")
    try:
        folder = TileFolder(root, None, 16, 0.2, 0.2, 0, tmp_path / "cache")
        assert deep / "tile0.png" in [f for f, _ in folder.files["all"]]
    finally:  # bottom up: pytest's rmtree recurses and would fail on 1,100 levels
        (deep / "tile0.png").unlink()
        for level in reversed(levels):
            level.rmdir()


def test_a_folder_past_the_path_limit_exits_2(tmp_path):
    root = tmp_path / "tiles"
    make_tiles(root, {"adipose": 3, "mucus": 3})
    # Folders nested past PATH_MAX (4,096 bytes): made one level at a time relative to the last one,
    # as nothing can name the deepest by its full path.
    fd = os.open(root / "mucus", os.O_RDONLY)
    try:
        for _ in range(4200 // 201 + 1):
            os.mkdir("d" * 200, dir_fd=fd)
            fd, parent = os.open("d" * 200, os.O_RDONLY, dir_fd=fd), fd
            os.close(parent)
    finally:
        os.close(fd)
    with pytest.raises(UserError, match="a path under it is longer than the system allows"):
        TileFolder(root, None, 16, 0.2, 0.2, 0, tmp_path / "cache")


def test_a_tile_deleted_during_the_scan_exits_2(tmp_path, monkeypatch):
    from sslpath.data import tile_files

    root = tmp_path / "tiles"
    make_tiles(root, {"adipose": 3, "mucus": 3})
    listed = tile_files.image_files

    def then_delete(folder: Path) -> list[Path]:
        files = listed(folder)
        files[0].unlink()  # another process removes a tile after it was listed
        return files

    monkeypatch.setattr(tile_files, "image_files", then_delete)
    with pytest.raises(UserError, match="it was moved or deleted while the folder was read"):
        TileFolder(root, None, 16, 0.2, 0.2, 0, tmp_path / "cache")


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()
