"""Checkpoints are data, never code. Crafted files (a real tiny checkpoint's weights with manipulated
`sslpath` metadata, pickles that would run code, broken files) are refused with one paragraph and
exit status 2 by evaluate and predict, and nothing they name is ever run.

Most cases go through `load_inference_model` in-process; a handful through both command lines.
"""

from __future__ import annotations

import math
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from sslpath.core.errors import UserError
from sslpath.models.checkpoint import MAX_DEPTH, load_inference_model

from factories import TINY_DATA, run_command

Meta = dict[str, Any]


class Payload:
    """Unpickling this creates `marker`: proof that a load ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def real(tiny_trained) -> dict:
    run = tiny_trained
    return {**run, "checkpoint": torch.load(run["ckpt"], map_location="cpu", weights_only=True)}


def crafted(real: dict, path: Path, edit: Callable[[Meta], Any]) -> Path:
    """The real checkpoint's weights with `edit(metadata)` as its metadata."""
    torch.save({**real["checkpoint"], "sslpath": edit(dict(real["checkpoint"]["sslpath"]))}, path)
    return path


def replace(**changes: Any) -> Callable[[Meta], Meta]:
    return lambda meta: {**meta, **changes}


def first_class_name(name: Any) -> Callable[[Meta], Meta]:
    return lambda meta: {**meta, "class_names": [name, *meta["class_names"][1:]]}


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


WALK = "sslpath.backbones.torch.save"
CREATE = '${oc.create:{_target_: builtins.exec, _args_: [\'open("marker", "w")\']}}'
SCHEMA_CASES: dict[str, tuple[Callable[[Meta], Any], str]] = {
    "target-top-level": (replace(_target_="builtins.exec"), "names code to instantiate (_target_)"),
    "target-nested-dict": (replace(mean={"inner": {"_target_": "os.system"}}), "names code to instantiate (_target_)"),
    "target-in-list": (first_class_name({"_target_": "os.system", "_args_": ["touch marker"]}), "names code to instantiate"),
    "walk-kind": (replace(kind=WALK), f"has kind='{WALK}'; allowed: baseline, finetune, simclr"),
    "walk-backbone": (replace(backbone=WALK), f"has backbone='{WALK}'; allowed: resnet18, resnet50, tiny, or timm/<name>"),
    "walk-stem": (replace(stem=WALK), f"has stem='{WALK}'; allowed: cifar, imagenet, reference"),
    "walk-num_classes": (replace(num_classes=WALK), "has num_classes='sslpath"),
    "walk-image_size": (replace(image_size=WALK), "has image_size='sslpath"),
    "walk-mean": (replace(mean=[WALK, 0.5, 0.5]), "has mean=['sslpath"),
    "oc-create": (replace(backbone=CREATE), "holds a config interpolation"),
    "oc-create-in-class-name": (first_class_name(CREATE), "holds a config interpolation"),
    "oc-env": (replace(stem="${oc.env:HOME}"), "holds a config interpolation"),
    "escaped-interpolation": (first_class_name("\\${oc.env:HOME}"), "holds a config interpolation"),
    "interpolation-in-key": (lambda meta: {**meta, "${oc.env:HOME}": 1}, "holds a config interpolation"),
    "nested-lists": (replace(mean=[[0.5], [0.5], [0.5]]), "has mean=[[0.5], [0.5], [0.5]]; allowed: 3 numbers from -10 to 10"),
    "deeply-nested-lists": (first_class_name(nested(3000)), f"nests values more than {MAX_DEPTH} levels deep"),
    "unknown-key": (replace(optimizer="adam"), "has unknown keys ['optimizer']"),
    "unknown-non-string-key": (lambda meta: {**meta, 7: "x"}, "has unknown keys ['7']"),
    "many-unknown-keys": (lambda meta: {**meta, **{f"k{i}": i for i in range(10_000)}}, "has unknown keys ['k0', 'k1',"),
    "missing-key": (lambda meta: {k: v for k, v in meta.items() if k != "kind"}, "lacks ['kind']"),
    "num_classes-string": (replace(num_classes="9"), "has num_classes='9'; allowed: an integer from 2 to 10000"),
    "num_classes-bool": (replace(num_classes=True), "has num_classes=True"),
    "num_classes-float": (replace(num_classes=9.0), "has num_classes=9.0"),
    "class_names-short": (lambda meta: {**meta, "class_names": meta["class_names"][:3]}, "allowed: a list of 9 distinct"),
    "class_names-repeated": (replace(class_names=["a"] * 9), "allowed: a list of 9 distinct printable texts"),
    "class_names-string": (replace(class_names="abcdefghi"), "has class_names='abcdefghi'"),
    "class_names-huge": (first_class_name("x" * 10**6), "has class_names=['xxxxx"),
    "class_names-201": (first_class_name("x" * 201), "printable texts of 1 to 200 characters"),  # names.MAX_CLASS_NAME
    "class_names-newline": (first_class_name("a\nb"), "printable texts of 1 to 200 characters"),
    "class_names-undecodable": (first_class_name("caf\udce9"), "printable texts of 1 to 200 characters"),
    "image_size-float": (replace(image_size=16.0), "has image_size=16.0"),
    "mean-nan": (replace(mean=[math.nan, 0.5, 0.5]), "has mean=[nan, 0.5, 0.5]"),
    "std-zero": (replace(std=[0.0, 0.2, 0.2]), "allowed: 3 numbers from 0.001 to 1000"),
    "std-tiny": (replace(std=[1e-308] * 3), "has std=[1e-308, 1e-308, 1e-308]; allowed: 3 numbers from 0.001"),
    "mean-huge": (replace(mean=[50.0, 0.5, 0.5]), "has mean=[50.0, 0.5, 0.5]; allowed: 3 numbers from -10 to 10"),
    "kind-outside": (replace(kind="Supervised"), "has kind='Supervised'"),
    "backbone-outside": (replace(backbone="resnet34"), "has backbone='resnet34'"),
    "stem-outside": (replace(stem="vit"), "has stem='vit'"),
    "format-float": (replace(format=3.0), "has format=3.0; allowed: 3"),
    "format-old": (replace(format=2), "has format=2; allowed: 3"),
    "label_fraction-zero": (replace(label_fraction=0), "has label_fraction=0; allowed: a number in (0, 1]"),
    "label_fraction-text": (replace(label_fraction="0.01"), "has label_fraction='0.01'"),
    "seed-float": (replace(seed=42.0), "has seed=42.0; allowed: an integer"),
    "pretrain_method-baseline": (replace(pretrain_method="baseline"), "pretrain_method='baseline'; allowed: null or an SSL"),
    "pretrain_method-list": (replace(pretrain_method=["simclr"]), "has pretrain_method=['simclr']"),
    "missing-training-settings": (
        lambda meta: {k: v for k, v in meta.items() if k not in ("label_fraction", "seed")},
        "lacks ['label_fraction', 'seed']",
    ),
    "metadata-not-a-dict": (lambda meta: [meta], "carries no sslpath metadata"),
    "weights-of-another-backbone": (replace(backbone="resnet18"), "the weights in"),
}


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=list(SCHEMA_CASES))
def test_manipulated_metadata_is_refused(real, tmp_path, case):
    edit, message = SCHEMA_CASES[case]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # only so that torch.save can write the deeply nested case
    try:
        path = crafted(real, tmp_path / "crafted.ckpt", edit)
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(UserError) as err:
        load_inference_model(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 1000


def test_a_class_name_is_only_ever_a_label(real, tmp_path):
    """Class names are free text by design (folder names); one that reads like code stays a string."""
    path = crafted(real, tmp_path / "named.ckpt", first_class_name(WALK))
    model, meta = load_inference_model(path)
    assert meta.class_names[0] == WALK and type(model.backbone).__module__ == "sslpath.models.backbones"


def test_pickle_payload_is_refused_and_never_run(real, tmp_path):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(Payload(live))).close()  # the payload works when something unpickles it
    assert live.exists()
    marker = tmp_path / "marker"
    path = crafted(real, tmp_path / "payload.ckpt", first_class_name(Payload(marker)))
    with pytest.raises(UserError, match="it needs code to unpickle, which a weights-only load does not run") as err:
        load_inference_model(path)
    assert not marker.exists() and "\n" not in str(err.value)


def broken_files(real: dict, tmp_path: Path) -> dict[str, Path]:
    data = real["ckpt"].read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.ckpt").write_text("model weights: see attached\n")
    torch.save({"sslpath": real["checkpoint"]["sslpath"]}, tmp_path / "no_weights.ckpt")
    torch.save({k: v for k, v in real["checkpoint"].items() if k != "sslpath"}, tmp_path / "no_metadata.ckpt")
    return {name: tmp_path / f"{name}.ckpt" for name in ("truncated", "text", "no_weights", "no_metadata", "missing")}


@pytest.mark.parametrize(
    "name, message",
    [
        ("truncated", "is not a readable PyTorch checkpoint"),
        ("text", "is not a readable PyTorch checkpoint (not a zip archive)"),
        ("no_weights", "is not a Lightning checkpoint (no state_dict)"),
        ("no_metadata", "carries no sslpath metadata"),
        ("missing", "ckpt: checkpoint not found"),
    ],
)
def test_broken_files_are_refused(real, tmp_path, name, message):
    with pytest.raises(UserError) as err:
        load_inference_model(broken_files(real, tmp_path)[name], "ckpt")
    assert message in str(err.value) and "\n" not in str(err.value)


# Through both command lines: (program, crafted file, message), run two at a time.
CLI_CASES = {
    "predict-pickle": ("sslpath.predict", "payload", "it needs code to unpickle"),
    "predict-oc-create": ("sslpath.predict", "oc-create", "holds a config interpolation"),
    "evaluate-target-in-list": ("sslpath.evaluate", "target-in-list", "names code to instantiate (_target_)"),
    "evaluate-text": ("sslpath.evaluate", "text", "is not a readable PyTorch checkpoint"),
}


@pytest.fixture(scope="module")
def cli_results(real, tmp_path_factory) -> dict[str, tuple[Path, Path, Any]]:
    files = tmp_path_factory.mktemp("files")
    marker = files / "marker"
    ckpts = {
        **broken_files(real, files),
        "payload": crafted(real, files / "payload.ckpt", first_class_name(Payload(marker))),
        **{name: crafted(real, files / f"{name}.ckpt", SCHEMA_CASES[name][0]) for name in ("oc-create", "target-in-list")},
    }

    def run(case: str) -> tuple[Path, Path, Any]:
        program, ckpt, _ = CLI_CASES[case]
        cwd = tmp_path_factory.mktemp(case)
        data = [f"input={real['npz']}"] if program == "sslpath.predict" else [*TINY_DATA[:-1], "paths.log_dir=logs"]
        return cwd, marker, run_command(f"ckpt={ckpts[ckpt]}", *data, "device=cpu", cwd=cwd, module=program)

    return {case: run(case) for case in CLI_CASES}


@pytest.mark.parametrize("case", CLI_CASES)
def test_command_lines_exit_2_with_one_paragraph(cli_results, case):
    program, _, message = CLI_CASES[case]
    cwd, marker, result = cli_results[case]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{program}: error: ") and message in line
    assert not marker.exists() and list(cwd.iterdir()) == []  # no predictions.csv, no logs/evaluations
