"""Adding a method touches only its own files (docs/extending.md): a toy SSL method defined in this file,
registered by subclassing, with its YAML in a temporary config dir on Hydra's search path, goes through
train → chain → evaluate → report like a built-in one. And an evaluation records the checkpoint's own
training settings, so an evaluated 1 %-label checkpoint lands in the report under 1 %."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from sslpath.checks.validate import validate
from sslpath.evaluation.evaluate import evaluate
from sslpath.models import registry
from sslpath.models.checkpoint import load_checkpoint, read_metadata
from sslpath.models.ssl import SSLMethod, SSLStep
from sslpath.reporting.write import write_report
from sslpath.training import chain
from sslpath.training.fit import train

from factories import TINY_DATA, compose_cfg, read_metrics, table


class Toy(SSLMethod):
    """A toy SSL method, no paper's: the two views' projections pulled together (cosine). It exists to
    show that a method defined outside sslpath's package goes through every stage."""

    kind = "toy"

    def __init__(self, projector_dim: int = 8, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.projector = nn.Linear(self.backbone.out_dim, projector_dim)

    def ssl_step(self, views: Sequence[torch.Tensor]) -> SSLStep:
        feats, z1, z2 = self.project_pair(views)
        return 2 - 2 * F.cosine_similarity(z1, z2).mean(), feats, {}


TOY_YAML = f"""\
defaults:
  - common/model@_here_
  - _self_

_target_: {__name__}.Toy
projector_dim: 8
knn_k: 0
input:
  augment: ${{augment.ssl}}
  views: 2
"""
# The method's optimiser preset (conf/optimizer/<method>.yaml; the optimizer group follows the model's name).
TOY_OPTIMIZER = "defaults:\n  - adamw\n  - _self_\n"


@pytest.fixture
def toy_conf(tmp_path) -> str:
    """A config dir holding only the toy's YAML, as `hydra.searchpath=[file://…]` adds it to sslpath's own."""
    root = tmp_path / "conf"
    (root / "model").mkdir(parents=True)
    (root / "optimizer").mkdir()
    (root / "model" / "toy.yaml").write_text(TOY_YAML)
    (root / "optimizer" / "toy.yaml").write_text(TOY_OPTIMIZER)
    return f"hydra.searchpath=[file://{root}]"


def test_a_method_defined_outside_sslpath_is_registered_by_its_class():
    assert registry.class_of("toy") is Toy and registry.is_ssl("toy") and "toy" in registry.ssl_kinds()
    assert "toy" not in registry.supervised_kinds() and registry.colour("toy") is None  # reports pick one by name


@pytest.mark.cli  # train → chain → evaluate → report: the multi-stage scenarios' tier
def test_a_toy_method_goes_through_train_chain_evaluate_and_report(tmp_path, toy_conf):
    cfg = compose_cfg(tmp_path / "ft", ["model=finetune", "model@pretrain=toy", toy_conf, "report=false"])
    validate(cfg)
    metrics = train(cfg)
    stage = chain.ssl_run_dir(metrics)
    assert stage.name.startswith("toy-") and read_metrics(stage)["model"] == "toy"
    assert metrics["pretrain_method"] == "toy" and metrics["model"] == "finetune"
    meta = read_metadata(load_checkpoint(metrics["ckpt_path"]), metrics["ckpt_path"])
    assert (meta.kind, meta.pretrain_method) == ("finetune", "toy")

    out = f"out={tmp_path / 'eval'}"
    evaluated = evaluate(compose_evaluate(f"ckpt={metrics['ckpt_path']}", out, "run_name=finetune-eval", "report=false"))
    assert evaluated["test_acc"] == metrics["test_acc"] and evaluated["pretrain_method"] == "toy"

    # The evaluation has its run's seed and label fraction: under its own run_name and its data source, not a
    # second replicate of the training run.
    results = write_report([stage, tmp_path / "ft", tmp_path / "eval"], tmp_path / "report", tensorboard=False)
    rows = {row["Model"]: row for row in table(results)}
    evaluation = "finetune-eval · synthetic, test split"
    assert [rows[name]["n"] for name in ("ssl-pretrain-toy", "finetune", evaluation)] == ["1", "1", "1"]
    assert rows[evaluation]["Test accuracy (%)"] == rows["finetune"]["Test accuracy (%)"]
    assert "An SSL model's validation accuracy is that of its online linear probe" in results.read_text()


def test_an_evaluated_one_percent_checkpoint_is_reported_under_one_percent(tmp_path):
    """Evaluate's own config says data.label_fraction=1.0; the checkpoint says 0.01, and the record follows it."""
    data = ["data.train_count=540", "data.label_fraction=0.01"]  # 60 per class: 1 % keeps one of each
    metrics = train(compose_cfg(tmp_path / "run", ["model=baseline", "seed=3", *data]))
    assert metrics["label_fraction"] == 0.01 and metrics["train_labels_per_class"] == 1
    evaluated = evaluate(
        compose_evaluate(f"ckpt={metrics['ckpt_path']}", f"out={tmp_path / 'eval'}", "seed=3", data[0], "report=false")
    )
    assert (evaluated["label_fraction"], evaluated["seed"], evaluated["test_acc"]) == (0.01, 3, metrics["test_acc"])
    results = write_report([tmp_path / "eval"], tmp_path / "report", figures=False)
    assert [(row["Model"], row["Label fraction"], row["n"]) for row in table(results)] == [
        ("baseline · synthetic, test split", "0.01", "1")
    ]
    assert "1% labels · seed 3" in results.read_text()


def compose_evaluate(*overrides: str):
    """conf/evaluate.yaml as `python -m sslpath.evaluate` composes it, on the tiny synthetic data of compose_cfg."""
    synthetic = [o for o in TINY_DATA if not o.startswith(("data.size", "data.batch_size"))]  # size: the checkpoint's
    GlobalHydra.instance().clear()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        return compose("evaluate", overrides=[*synthetic, "device=cpu", *overrides])


def test_kind_names_are_unique_across_classes():
    with pytest.raises(TypeError, match="model kind 'toy'"):
        type("OtherToy", (SSLMethod,), {"kind": "toy", "__module__": __name__})
