"""Checks of the user-facing settings, run before any data is read or any model is built.

Hydra passes command-line values through as given (`trainer.max_epochs=abc` is a string), so every
value is checked against `sslpath.checks.schema` (its type and range, per config path and per class a
node instantiates), and then the relations between settings (the backbone's image size and the
data's, the metrics monitors need and the ones the model logs, a chain's SSL stage, the model's
size and this machine's memory), each with a message naming the key, the value and what is allowed.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from sslpath.checks.rules import TARGET_KEYS, WIDTH, Num, fmt, rows_of
from sslpath.checks.schema import NOT_MODEL_ARGS, PATHS, TARGETS
from sslpath.core.errors import NonFiniteLoss, UserError
from sslpath.data.corruptions import load_suite
from sslpath.data.npz import memory_budget
from sslpath.models import registry
from sslpath.models.backbones import on_meta

FIX = "Fix the override on the command line (or in your experiment config)."
KNN_METRIC = "val/knn_acc"
SHOWN_CHARS = 200  # of a value in a message: a 4,000-character path would fill the screen


def validate(cfg: DictConfig) -> None:
    """Every setting of a training run, then the relations between them; raises UserError at the first problem."""
    if not isinstance(cfg.get("pretrain"), DictConfig):
        raise UserError(
            f"pretrain={cfg.get('pretrain')!r} replaced the whole SSL stage config with a value. Choose the SSL "
            f"method of a chained fine-tune with model@pretrain=<method> ({', '.join(registry.ssl_kinds())}), and set "
            "its options with pretrain.<key>=…"
        )
    check_settings(cfg)
    check_image_size(cfg)
    check_optimized_metric(cfg)
    check_monitors(cfg)
    check_chain(cfg)
    if cfg.get("robustness") is not None:  # experiment=robustness: its benchmark runs after the sweep
        load_suite(cfg.robustness, "robustness")
    check_model_size(cfg, "model")
    if needs_pretraining(cfg):
        check_model_size(cfg, "pretrain")


# ----------------------------------------------------------------------------------------------
# The schema: each value's type and range


def check_settings(cfg: DictConfig, under: str = "") -> None:
    """The rows of `sslpath.checks.schema` for every value of cfg (or of its node `under`, e.g. "data")."""
    root = OmegaConf.select(cfg, under) if under else cfg
    # The classes' own settings first: a path setting may interpolate one (frozen_eval.batch_size is
    # ${data.eval_batch_size}), and the message should name the key the user set.
    for path, node in target_nodes(root, under):
        check_node(node, path)
    if not under:
        for key, rule in PATHS.items():
            if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT:
                check_value(cfg, key, key, rule)


_ABSENT = object()


def check_paths(cfg: DictConfig, prefixes: tuple[str, ...]) -> None:
    """The schema's path rows under these prefixes (e.g. evaluate's "eval."), for a command whose config
    is not training's, so check_settings' walk over every row does not apply."""
    for key, rule in PATHS.items():
        if key.startswith(prefixes):
            check_value(cfg, key, key, rule)


def check_value(node: DictConfig, key: str, path: str, rule: Any) -> None:
    try:
        value = OmegaConf.select(node, key, default=_ABSENT, throw_on_missing=True)
    except MissingMandatoryValue:
        raise UserError(f"{path} is required but not set: set {path}=… ({rule.allowed}).") from None
    if value is not _ABSENT and not rule.ok(value):
        shown = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
        shown = repr(shown) if len(repr(shown)) <= SHOWN_CHARS else f"{repr(shown)[:SHOWN_CHARS]}…"
        raise UserError(f"{path}={shown} is not valid: it must be {rule.allowed}. {FIX}")


def target_nodes(node: Any, path: str) -> Iterator[tuple[str, DictConfig]]:
    """Every node with a `_target_` under node, with its path in override syntax (augment.ssl.ops.4).
    Nodes that interpolate another (pretrain.backbone: ${model.backbone}) are checked at their source."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        children = node.keys()
    elif isinstance(node, ListConfig):
        children = range(len(node))
    else:
        return
    for key in children:
        if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            continue
        yield from target_nodes(node[key], f"{path}.{key}" if path else str(key))


def check_node(node: DictConfig, path: str) -> None:
    """A `_target_` node: no unknown keys, every row's value allowed, and its class's relations."""
    target = node._target_
    obj = locate(target, path)
    params = class_params(obj)
    rows = rows_of(params)
    known = accepted_keys(obj)
    if known is not None:
        known |= {key.split(".")[0] for key in rows}
        unknown = [str(k) for k in node if k not in known and k not in TARGET_KEYS]
        if unknown:
            raise UserError(
                f"{path}.{unknown[0]} is not a setting of {target}: it takes {', '.join(sorted(known))}. Correct the "
                f"name, or remove the override of {path}.{unknown[0]}."
            )
    for key, rule in rows.items():
        check_value(node, key, f"{path}.{key}", rule)
    for p in params:
        if p.check is not None:
            p.check(node, path)


def locate(target: Any, path: str) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(str(target))
    except Exception as err:
        raise UserError(
            f"{path}._target_={target} names no importable class or function ({type(err).__name__}). Use a config "
            "group option (model=…, augment@augment.ssl=…) or correct the name."
        ) from None


_RESOLVED: dict[str, Any] = {}  # sslpath.checks.schema.TARGETS names -> the objects they name


def _table() -> dict[Any, Any]:
    """sslpath.checks.schema.TARGETS keyed by the objects its import paths name (a kornia op's public path and its
    module path name one class). Only names of modules already imported are resolved: a node's class and
    its bases are, and importing the rest (optuna: seconds) would only slow every run down."""
    from hydra.utils import get_object

    table = {}
    for name, params in TARGETS.items():
        if name not in _RESOLVED and name.rsplit(".", 1)[0] in sys.modules:
            with contextlib.suppress(Exception):
                _RESOLVED[name] = get_object(name)
        if name in _RESOLVED:
            table[_RESOLVED[name]] = params
    return table


def class_params(obj: Any) -> list[Any]:
    """The schema rows of obj and of each base class it has rows for, most specific first."""
    table = _table()
    chain = obj.__mro__ if inspect.isclass(obj) else (obj,)
    return [table[c] for c in chain if c in table]


def accepted_keys(obj: Any) -> set[str] | None:
    """The keyword arguments obj takes, following **kwargs up the class hierarchy; None when open-ended."""
    names: set[str] = set()
    for fn in [c.__dict__["__init__"] for c in obj.__mro__ if "__init__" in c.__dict__] if inspect.isclass(obj) else [obj]:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


# ----------------------------------------------------------------------------------------------
# Relations between settings


def check_image_size(cfg: DictConfig) -> None:
    """The backbone is built for the tiles' size: a ViT built for another size fails at its first batch."""
    size = OmegaConf.select(cfg, "data.size")
    for key in ("model", "pretrain"):
        built = OmegaConf.select(cfg, f"{key}.backbone.image_size", default=None)
        if built is not None and size is not None and built != size:
            raise UserError(
                f"{key}.backbone.image_size={built} but data.size={size}: the backbone must be built for the size the "
                f"tiles are resized to. Leave {key}.backbone.image_size unset (it follows data.size), or set data.size={built}."
            )


def logged_val_metrics(cfg: DictConfig, key: str = "model") -> tuple[str, ...]:
    """Validation metrics the model at `key` logs every epoch (val/knn_acc only with knn_k > 0)."""
    from hydra.utils import get_class

    node = cfg[key]
    metrics = get_class(node._target_).val_metrics
    return tuple(m for m in metrics if m != KNN_METRIC or (node.get("knn_k") or 0) > 0)


def check_optimized_metric(cfg: DictConfig) -> None:
    """The value main() returns to sweepers must be one the model logs; checked before any training."""
    from hydra.utils import get_class

    logged = logged_val_metrics(cfg)
    if cfg.optimized_metric not in logged:
        knn = " (val/knn_acc needs model.knn_k > 0)" if cfg.optimized_metric == KNN_METRIC else ""
        raise UserError(
            f"optimized_metric={cfg.optimized_metric} is not a validation metric that "
            f"{get_class(cfg.model._target_).__name__} logs{knn}; valid names for this model: {', '.join(logged)}. It is "
            "the value returned to Hydra sweepers (hparams_search=optuna maximizes it; for val/loss also set "
            "hydra.sweeper.direction=minimize)."
        )


def check_monitors(cfg: DictConfig) -> None:
    """Checkpoint and early-stopping callbacks monitor a metric the model logs, and validation runs to log it."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    logged = logged_val_metrics(cfg)
    for name, node in (cfg.get("callbacks") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        cls = locate(node._target_, f"callbacks.{name}")
        if not (inspect.isclass(cls) and issubclass(cls, (ModelCheckpoint, EarlyStopping))):
            continue
        monitor = node.get("monitor")
        if monitor is None and issubclass(cls, ModelCheckpoint):
            continue  # the last epoch's checkpoint is kept
        if monitor not in logged:
            knn = " (val/knn_acc needs model.knn_k > 0)" if monitor == KNN_METRIC else ""
            raise UserError(
                f"callbacks.{name}.monitor={monitor} is not a metric that {cfg.model._target_.rsplit('.', 1)[-1]} logs at "
                f"validation; it logs {', '.join(logged)}{knn}. Set callbacks.{name}.monitor to one of them."
            )
        check_validation_runs(cfg, f"callbacks.{name}.monitor={monitor}")


def check_validation_runs(cfg: DictConfig, why: str) -> None:
    trainer = cfg.trainer
    if trainer.get("fast_dev_run"):
        return
    every, epochs, limit = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs"), trainer.get("limit_val_batches")
    if limit is not None and limit == 0:
        raise UserError(f"{why} needs validation, but trainer.limit_val_batches={limit} turns it off. Allow validation batches.")
    if every is not None and epochs is not None and every > epochs:
        raise UserError(
            f"{why} needs validation, but trainer.check_val_every_n_epoch={every} > trainer.max_epochs={epochs}: it "
            "would never run. Lower check_val_every_n_epoch or raise max_epochs."
        )


def needs_pretraining(cfg: DictConfig) -> bool:
    """A fine-tune without model.pretrained_ckpt chains its SSL stage (model@pretrain) first."""
    return "pretrained_ckpt" in cfg.model and cfg.model.pretrained_ckpt is None


def check_chain(cfg: DictConfig) -> None:
    """A chained fine-tune's stage (model@pretrain=…) must be an SSL method: found before it trains."""
    from hydra.utils import get_class

    if not needs_pretraining(cfg):
        return
    if cfg.trainer.get("fast_dev_run"):
        raise UserError(
            f"debug=fdr (trainer.fast_dev_run={cfg.trainer.fast_dev_run}) writes no checkpoint, so the SSL stage this "
            "fine-tune chains would leave no weights to start from, and a stage no later run could use. Smoke-test the "
            "stage alone (model=simclr debug=fdr), give the fine-tune model.pretrained_ckpt=FILE, or try the whole chain "
            "with debug=limit."
        )
    for part in ("name", "stem"):
        mine, stage_part = cfg.model.backbone.get(part), cfg.pretrain.backbone.get(part)
        if mine != stage_part:
            raise UserError(
                f"pretrain.backbone.{part}={stage_part} but model.backbone.{part}={mine}: the SSL stage's backbone weights "
                "are loaded into the fine-tune's, so both must be the same design. Leave pretrain.backbone unset (it "
                "follows model.backbone)."
            )
    stage = get_class(cfg.pretrain._target_)
    if not stage.ssl:
        raise UserError(
            f"model@pretrain chose a {stage.kind} model ({cfg.pretrain._target_}), but the stage a fine-tune pretrains "
            f"first must be a self-supervised method: model@pretrain={', '.join(registry.ssl_kinds()[:-1])} or "
            f"{registry.ssl_kinds()[-1]}. "
            "Or start from an SSL checkpoint with model.pretrained_ckpt=FILE."
        )


def check_model_size(cfg: DictConfig, key: str) -> None:
    """The model at `key`, built on the meta device (no memory), must fit this machine: a projector of
    a million by a million weights is refused here rather than by the allocator mid-build."""
    from hydra.utils import instantiate

    node = OmegaConf.to_container(cfg[key], resolve=True)
    node = {k: v for k, v in node.items() if k not in NOT_MODEL_ARGS}
    node["backbone"] = {**node["backbone"], "pretrained": False}  # weights do not change sizes; no file read
    with on_meta():
        model = instantiate(node, num_classes=cfg.data.get("num_classes") or 2, _convert_="all")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    other = sum(p.numel() for p in model.parameters() if not p.requires_grad) + sum(b.numel() for b in model.buffers())
    need = 4 * (4 * trainable + other)  # fp32 weights, gradients and two Adam moments; frozen copies and buffers
    if need <= memory_budget():
        return
    parts = sorted(((sum(p.numel() for p in m.parameters()), n) for n, m in model.named_children()), reverse=True)
    widths = [
        f"{key}.{k}={OmegaConf.select(cfg[key], k)}"
        for k, rule in rows_of(class_params(locate(cfg[key]._target_, key))).items()
        if (rule is WIDTH or getattr(rule, "item", None) is WIDTH) and OmegaConf.select(cfg[key], k) is not None
    ]
    raise UserError(
        f"{key} would have {trainable + other:,} parameters ({', '.join(f'{n} {c:,}' for c, n in parts[:3])}): training "
        f"needs about {need / 2**30:,.0f} GiB for its weights, gradients and optimiser state, more than half of this "
        f"machine's memory ({memory_budget() / 2**30:,.0f} GiB). Use smaller widths"
        f"{': ' + ', '.join(widths) if widths else ''}, or a smaller backbone."
    )


# ----------------------------------------------------------------------------------------------
# NaN losses: which settings to name


def nan_suspects(cfg: DictConfig, key: str = "model") -> list[str]:
    """Settings of the model at `key`, its optimiser, schedule and augmentation that lie outside their usual
    range (`Num.usual` in sslpath.checks.schema), and a float16 precision: the likely causes of a NaN loss."""
    nodes = [key, "optimizer", "scheduler", augment_of(cfg, key)]
    found = []
    for root in filter(None, nodes):
        for path, node in target_nodes(OmegaConf.select(cfg, root), root):
            for k, rule in rows_of_node(node, path).items():
                value = OmegaConf.select(node, k, default=None)
                if isinstance(rule, Num) and rule.unusual(value):
                    lo, hi = rule.usual
                    found.append(f"{path}.{k}={value:g} (usually {usual_range(lo, hi)})")
    precision = str(OmegaConf.select(cfg, "trainer.precision", default=""))
    if precision.startswith("16"):
        found.append(f"trainer.precision={precision} (float16 overflows above 65504: use bf16-mixed or 32-true)")
    return found


def usual_range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"from {fmt(lo)} to {fmt(hi)}"
    return f"{fmt(lo)} or more" if lo is not None else f"at most {fmt(hi)}"


def rows_of_node(node: DictConfig, path: str) -> dict[str, Any]:
    return rows_of(class_params(locate(node._target_, path)))


def augment_of(cfg: DictConfig, key: str) -> str | None:
    """The augment.* node the model at `key` trains with (its input.augment interpolates it)."""
    raw = OmegaConf.to_container(cfg[key], resolve=False).get("input", {}).get("augment")
    match = re.fullmatch(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else None
    return match.group(1) if match else None


@contextlib.contextmanager
def nan_advice(cfg: DictConfig, key: str = "model") -> Iterator[None]:
    """A NaN/inf training loss (sslpath.training.callbacks.NonFiniteLoss) of the model at `key` is reported with the
    settings that likely caused it, or, when none stands out, the usual remedies."""
    try:
        yield
    except NonFiniteLoss as err:
        suspects = nan_suspects(cfg, key)
        if suspects:
            advice = f"Likely cause: {'; '.join(suspects)}: bring it into its usual range."
        else:
            lr = OmegaConf.select(cfg, "optimizer.lr", default=None)
            advice = (
                f"No setting is outside its usual range: lower the learning rate (optimizer.lr={lr}), use "
                "trainer.precision=32-true, or check the data for broken images."
            )
        raise UserError(f"{err.what} {advice} {err.kept}") from None
