"""The schema of every user-set value: its type and allowed range, in one place.

Values are found two ways. `PATHS` holds settings that no class receives (seed, paths, resume…), by
config path. `TARGETS` holds the parameters of each class (or function) a config node instantiates
with `_target_`, by the class's import path: a row applies wherever a node of that class, or of a
subclass, appears, so a method's rows cover `model=byol` and `model@pretrain=byol` alike, and a
kornia op's rows cover it in any augmentation pipeline. When a class gains a parameter, add a row
to its `Params`; tests/test_validate_schema.py fails for a shipped setting without one.

`Num.usual` is the range a value normally has: outside it a value is allowed, but named as the likely
cause when the training loss becomes NaN (`sslpath.checks.validate.nan_suspects`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig

from sslpath.data.stain import OD_SCALE
from sslpath.data.stain_norm import METHODS as STAIN_METHODS
from sslpath.models.checkpoint import MAX_ABS_MEAN, MAX_STD, MIN_STD
from sslpath.results.stats import LEVEL_RANGE, RESAMPLES_RANGE, SEED_RANGE

INT, FLOAT = "an integer", "a number"
# POSIX limits of Linux and macOS file systems: a longer name or path fails in the OS (ENAMETOOLONG).
NAME_MAX, PATH_MAX = 255, 4095


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt(x: float) -> str:
    """A bound as people write it: 4294967295, 0.5, 13.8155."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


class Rule:
    """What one value may be: `ok(value)`, and `allowed`, the words for it in a message."""

    allowed: str = ""

    def ok(self, value: Any) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Num(Rule):
    kind: str = FLOAT
    lo: float | None = None
    hi: float | None = None
    open_low: bool = False
    open_high: bool = False
    usual: tuple[float | None, float | None] | None = None  # see the module docstring

    def ok(self, value: Any) -> bool:
        if not is_number(value) or (self.kind == INT and not isinstance(value, int)) or not math.isfinite(value):
            return False
        low = self.lo is None or (value > self.lo if self.open_low else value >= self.lo)
        return low and (self.hi is None or (value < self.hi if self.open_high else value <= self.hi))

    def unusual(self, value: Any) -> bool:
        lo, hi = self.usual or (None, None)
        return is_number(value) and ((lo is not None and value < lo) or (hi is not None and value > hi))

    @property
    def allowed(self) -> str:  # "a number > 0 and <= 1", "an integer >= 1"
        if self.lo is not None and self.lo == self.hi:
            return f"exactly {fmt(self.lo)}"
        low = "" if self.lo is None else f"{'>' if self.open_low else '>='} {fmt(self.lo)}"
        high = "" if self.hi is None else f"{'<' if self.open_high else '<='} {fmt(self.hi)}"
        kind = f"a finite {self.kind[2:]}" if self.kind == FLOAT and self.hi is None else self.kind
        return f"{kind} {' and '.join(b for b in (low, high) if b)}".strip()


@dataclass(frozen=True)
class Bool(Rule):
    allowed: str = "true or false"

    def ok(self, value: Any) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class OneOf(Rule):
    values: tuple[Any, ...] = ()

    def ok(self, value: Any) -> bool:
        return not isinstance(value, (bool, DictConfig, ListConfig, list, dict)) and value in self.values

    @property
    def allowed(self) -> str:
        return f"one of {', '.join(map(str, self.values))}" if len(self.values) > 1 else str(self.values[0])


@dataclass(frozen=True)
class Text(Rule):
    pattern: str | None = None  # the whole text must match it
    what: str = "a non-empty text"
    empty: bool = False

    def ok(self, value: Any) -> bool:
        if not isinstance(value, str) or (value == "" and not self.empty):
            return False
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None

    @property
    def allowed(self) -> str:
        return self.what


@dataclass(frozen=True)
class FilePath(Rule):
    """A file or folder name the OS can take: checked here, so it never ends in an OS error mid-run."""

    allowed: str = (
        f"a path whose every name is at most {NAME_MAX} bytes and whole at most {PATH_MAX} bytes, without NUL "
        "characters (quote a path that looks like a number: key='2024')"
    )

    def ok(self, value: Any) -> bool:
        if not isinstance(value, str) or not value or "\0" in value:
            return False
        raw = os.fsencode(os.path.expanduser(value))
        return len(raw) <= PATH_MAX and all(len(part) <= NAME_MAX for part in raw.split(b"/"))


@dataclass(frozen=True)
class Seq(Rule):
    item: Rule = field(default_factory=lambda: Num())
    min_len: int = 0
    max_len: int | None = None
    ordered: bool = False  # non-decreasing, e.g. a (low, high) range

    def ok(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple, ListConfig)) or len(value) < self.min_len:
            return False
        if self.max_len is not None and len(value) > self.max_len:
            return False
        items = list(value)
        return all(map(self.item.ok, items)) and (not self.ordered or all(a <= b for a, b in zip(items, items[1:])))

    @property
    def allowed(self) -> str:
        if self.max_len == self.min_len:
            count = f"{self.min_len}"
        elif self.max_len is None:
            count = f"{self.min_len} or more" if self.min_len else "any number of"
        else:
            count = f"{self.min_len} to {self.max_len}"
        order = ", in increasing order" if self.ordered else ""
        return f"a list of {count} values, each {self.item.allowed}{order}"


@dataclass(frozen=True)
class Either(Rule):
    options: tuple[Rule, ...] = ()

    def ok(self, value: Any) -> bool:
        return any(rule.ok(value) for rule in self.options)

    @property
    def allowed(self) -> str:
        return " or ".join(rule.allowed for rule in self.options)


@dataclass(frozen=True)
class Null(Rule):
    allowed: str = "null"

    def ok(self, value: Any) -> bool:
        return value is None


@dataclass(frozen=True)
class Node(Rule):
    """A config node of its own (a `_target_` node, checked by its own rows)."""

    allowed: str = "a config node"

    def ok(self, value: Any) -> bool:
        return isinstance(value, (dict, DictConfig))


def opt(rule: Rule) -> Either:
    """`rule`, or null."""
    return Either((rule, Null()))


def num(lo: float | None = None, hi: float | None = None, **kwargs: Any) -> Num:
    return Num(FLOAT, lo, hi, **kwargs)


def integer(lo: float | None = None, hi: float | None = None, **kwargs: Any) -> Num:
    return Num(INT, lo, hi, **kwargs)


def pair(item: Rule) -> Seq:
    """A (low, high) range."""
    return Seq(item, 2, 2, ordered=True)


BOOL, PATH, TEXT, NODE = Bool(), FilePath(), Text(), Node()
PROB = num(0, 1)
SEED = integer(0, 2**32 - 1)
POSITIVE = num(0, open_low=True)
NON_NEGATIVE = num(0)
COUNT = integer(1)
# Widths of projection heads: DINOv2's 131,072 prototypes are the largest in use; the memory check
# (sslpath.checks.validate.check_model_size) decides what fits this machine.
WIDTH = integer(1, 2**20)
# Temperatures divide similarities: 0 is a division by zero; below ~0.01 the softmax saturates.
TEMPERATURE = num(0, open_low=True, usual=(0.01, 10))
LR = num(0, open_low=True, usual=(None, 1))
EMA = num(0, 1)  # momentum of an exponential moving average
SIZE = integer(8, 1024)  # tile size in px: as a checkpoint's image_size (sslpath.models.checkpoint)
CLASSES = integer(2, 10_000)
SPLIT_SHARE = num(0, 1, open_low=True)
MONITOR = opt(Text(r"[\w/.-]+", "a metric name such as val/acc"))
MODE = OneOf(("min", "max"))
FOLDER_NAME = Text(r"[^/\0]*", "a folder name (empty: none)", empty=True)


@dataclass(frozen=True)
class Params:
    """A class's parameters: key (dotted for nested keys) -> rule, and `check(node, path)` for the
    relations between them (e.g. momentum_start <= momentum_end)."""

    rows: Mapping[str, Rule]
    check: Callable[[DictConfig, str], None] | None = None


def _momentum_order(node: DictConfig, path: str) -> None:
    start, end = node.get("momentum_start"), node.get("momentum_end")
    if is_number(start) and is_number(end) and start > end:
        from sslpath.core.errors import UserError

        raise UserError(
            f"{path}.momentum_start={start} is above {path}.momentum_end={end}: the momentum rises from start to end "
            "over training (e.g. 0.99 -> 1.0). Swap them or set them equal for a constant momentum."
        )


def _nesterov(node: DictConfig, path: str) -> None:
    if node.get("nesterov") and (not node.get("momentum") or node.get("dampening", 0)):
        from sslpath.core.errors import UserError

        raise UserError(
            f"{path}.nesterov=true needs {path}.momentum > 0 and {path}.dampening=0 (got momentum="
            f"{node.get('momentum')}, dampening={node.get('dampening', 0)}). Set {path}.nesterov=false, or a momentum "
            "such as 0.9."
        )


def _synthetic_memory(node: DictConfig, path: str) -> None:
    """Synthetic tiles are drawn in float64 (about 9 arrays of N×size² values per split): refused before
    a count too large for this machine ends in a MemoryError."""
    from sslpath.core.errors import UserError
    from sslpath.data.npz import memory_budget

    counts = {k: node.get(k) for k in ("train_count", "val_count", "test_count")}
    size = node.get("size")
    if not all(is_number(v) for v in (*counts.values(), size)):
        return
    need = (9 * 8 * max(counts.values()) + 3 * sum(counts.values())) * float(size) ** 2
    if need > memory_budget():
        shown = ", ".join(f"{path}.{k}={v}" for k, v in counts.items())
        raise UserError(
            f"{shown} at {path}.size={size} need about {need / 2**30:,.0f} GiB to draw, more than half of this machine's "
            f"memory ({memory_budget() / 2**30:,.0f} GiB). Use smaller counts: synthetic data is for tests and dry runs."
        )


def _sync_batchnorm(node: DictConfig, path: str) -> None:
    """torch's SyncBatchNorm runs on GPUs only: found when the trainer is set, not when fit starts."""
    if not node.get("sync_batchnorm"):
        return
    import torch

    from sslpath.core.errors import UserError

    accelerator = str(node.get("accelerator", "auto"))
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        raise UserError(
            f"{path}.sync_batchnorm=true (trainer=ddp) needs GPUs, but this run would use the CPU ({path}.accelerator="
            f"{accelerator}). Set {path}.sync_batchnorm=false, or use trainer=cpu / trainer=default here."
        )


def _stain_reference(node: DictConfig, path: str) -> None:
    """A reference without a normalisation would be silently unused."""
    from sslpath.core.errors import UserError

    if node.get("stain_reference") is not None and node.get("stain_norm", "none") == "none":
        raise UserError(
            f"{path}.stain_reference={node.stain_reference} but {path}.stain_norm=none, so nothing would use it; set "
            f"{path}.stain_norm=reinhard or macenko, or leave {path}.stain_reference unset."
        )


DATA = {
    "batch_size": COUNT,
    "eval_batch_size": COUNT,
    "label_fraction": SPLIT_SHARE,
    "on_device": Either((BOOL, OneOf(("auto",)))),
    "seed": SEED,
    # per RGB channel, in the ranges a checkpoint may carry: a smaller std or a larger mean blows inputs up to inf
    "mean": Seq(num(-MAX_ABS_MEAN, MAX_ABS_MEAN), 3, 3),
    "std": Seq(num(MIN_STD, MAX_STD), 3, 3),
    "channels_last": BOOL,
    "num_classes": CLASSES,
    "stain_norm": OneOf(STAIN_METHODS),
    "stain_reference": opt(PATH),
    "stain_min_tissue": PROB,
}
SSL_VIEWS = {"input.views": integer(2, 2)}  # the two views of the paper's loss
HEAD = {"projector_hidden_dim": WIDTH, "projector_dim": WIDTH}
KORNIA_OP = {"p": PROB, "same_on_batch": BOOL, "keepdim": BOOL}
RESAMPLE = Either((Text(r"[A-Za-z_]+", "a resampling name (nearest, bilinear, bicubic)"), integer(0, 5)))
CHECKPOINT_DIR = {"dirpath": PATH, "filename": Text(r"[^/\0]+", "a file name without '/'")}


TARGETS: dict[str, Params] = {
    # data
    "sslpath.data.datamodule.ArrayDataModule": Params(DATA, _stain_reference),
    "sslpath.data.datamodule.MedMNISTDataModule": Params(
        {
            "flag": Text(r"[a-z0-9_]+", "a MedMNIST flag such as pathmnist or bloodmnist"),
            "root": PATH,
            "path": opt(PATH),
            "size": SIZE,
            "download": Either((BOOL, OneOf(("auto",)))),
            "download_timeout_s": num(0, 3600, open_low=True),
            "num_classes": opt(CLASSES),
            "url": opt(Text(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+", "a URL (scheme://…)")),
            "md5": opt(Text(r"[0-9a-fA-F]{32}", "32 hexadecimal digits")),
        }
    ),
    "sslpath.data.datamodule.FolderDataModule": Params(
        {
            "dir": PATH,
            "unlabeled_dir": opt(PATH),
            "val_fraction": num(0, 1, open_low=True, open_high=True),
            "test_fraction": num(0, 1, open_low=True, open_high=True),
            "size": SIZE,
            "cache_dir": PATH,
            "num_classes": opt(CLASSES),
            "max_pixels": COUNT,
        }
    ),
    "sslpath.data.datamodule.SyntheticDataModule": Params(
        {"size": SIZE, "train_count": COUNT, "val_count": COUNT, "test_count": COUNT}, _synthetic_memory
    ),
    # models
    "sslpath.models.backbones.build": Params(
        {
            "name": Text(r"[\w./-]+", "a backbone name: resnet18, resnet50, tiny or timm/<name>"),
            "stem": OneOf(("cifar", "imagenet", "reference")),
            "pretrained": BOOL,
            "image_size": SIZE,
        }
    ),
    "sslpath.models.base.ImageModel": Params(
        {
            "backbone": NODE,
            "optimizer": NODE,
            "scheduler": opt(NODE),
            "no_decay_norm_bias": BOOL,
            "channels_last": BOOL,
            "compile": BOOL,
            "input.augment": opt(Either((NODE, Seq(NODE, 1, 32)))),  # one pipeline, or one per view
            "input.views": integer(1, 1),  # supervised batches are (x, y)
            "input.clean_first_view": BOOL,
        }
    ),
    "sslpath.models.supervised.FineTune": Params({"pretrained_ckpt": opt(PATH), "freeze_backbone": BOOL}),
    "sslpath.models.ssl.SSLMethod": Params(
        {"joint": BOOL, "knn_k": integer(0, 10_000), "knn_temperature": POSITIVE, **SSL_VIEWS}
    ),
    "sslpath.models.ssl.SimCLR": Params(
        {
            "projector_dims": Seq(WIDTH, 1, 8),
            "projector_norm": BOOL,
            "temperature": TEMPERATURE,
            "gather_distributed": BOOL,
        }
    ),
    "sslpath.models.ssl.BarlowTwins": Params({**HEAD, "lambda_param": NON_NEGATIVE, "gather_distributed": BOOL}),
    "sslpath.models.ssl.VICReg": Params(
        {
            **HEAD,
            "projector_layers": integer(2, 32),  # lightly builds 2 layers for any value below 2
            "invariance_weight": NON_NEGATIVE,
            "variance_weight": NON_NEGATIVE,
            "covariance_weight": NON_NEGATIVE,
            "gather_distributed": BOOL,
        }
    ),
    "sslpath.models.ssl.MomentumMethod": Params(
        {
            "momentum_start": EMA,
            "momentum_end": EMA,
            "momentum_max_init_share": opt(num(0, 1, open_low=True)),
            "export_target": BOOL,
        },
        _momentum_order,
    ),
    "sslpath.models.ssl.BYOL": Params({**HEAD, "predictor_hidden_dim": WIDTH}),
    "sslpath.models.ssl.MoCoV3": Params(
        {**HEAD, "predictor_hidden_dim": WIDTH, "temperature": TEMPERATURE, "gather_distributed": BOOL}
    ),
    "sslpath.models.ssl.DINO": Params(
        {
            "head_hidden_dim": WIDTH,
            "head_bottleneck_dim": WIDTH,
            "head_dim": WIDTH,
            "head_batch_norm": BOOL,
            "norm_last_layer": BOOL,
            "freeze_last_layer_epochs": integer(0),
            "teacher_temp": TEMPERATURE,
            "warmup_teacher_temp": TEMPERATURE,
            "warmup_teacher_temp_epochs": integer(0),
            "student_temp": TEMPERATURE,
            "center_momentum": EMA,
            "clip_grad": opt(POSITIVE),
            "export": OneOf(("teacher", "student")),
            "input.views": integer(2, 32),  # two global views; extra same-size views the student alone sees
        }
    ),
    # optimisation: sslpath's own keys on any optimizer node (sslpath.models.optim.OptimizerSettings)
    "torch.optim.Optimizer": Params(
        {"reference_batch": opt(COUNT), "weight_decay_end": opt(NON_NEGATIVE), "norm_bias_lr": opt(LR)}
    ),
    "lightly.utils.lars.LARS": Params(
        {
            "lr": LR,
            "momentum": num(0, 1, open_high=True),
            "dampening": num(0, 1),
            "weight_decay": NON_NEGATIVE,
            "nesterov": BOOL,
            "trust_coefficient": POSITIVE,
            "eps": POSITIVE,
        },
        _nesterov,
    ),
    "torch.optim.Adam": Params(
        {"lr": LR, "weight_decay": NON_NEGATIVE, "betas": Seq(num(0, 1, open_high=True), 2, 2), "eps": POSITIVE, "amsgrad": BOOL}
    ),
    "torch.optim.AdamW": Params(
        {"lr": LR, "weight_decay": NON_NEGATIVE, "betas": Seq(num(0, 1, open_high=True), 2, 2), "eps": POSITIVE, "amsgrad": BOOL}
    ),
    "torch.optim.SGD": Params(
        {
            "lr": LR,
            "weight_decay": NON_NEGATIVE,
            "momentum": num(0, 1, open_high=True),  # 1 or more: the velocity never decays and grows without bound
            "dampening": num(0, 1),
            "nesterov": BOOL,
        },
        _nesterov,
    ),
    "sslpath.models.optim.warmup_cosine": Params({"warmup_epochs": NON_NEGATIVE, "min_factor": num(0, 1)}),
    "sslpath.models.optim.multistep": Params({"milestones": Seq(integer(0)), "gamma": num(0, open_low=True, usual=(None, 1))}),
    "sslpath.models.optim.constant": Params({}),
    # augmentation
    "sslpath.data.augment.Pipeline": Params({"ops": Seq(NODE)}),
    "kornia.augmentation.RandomHorizontalFlip": Params({**KORNIA_OP, "p_batch": PROB}),
    "kornia.augmentation.RandomVerticalFlip": Params({**KORNIA_OP, "p_batch": PROB}),
    "kornia.augmentation.RandomResizedCrop": Params(
        {
            **KORNIA_OP,
            "size": Seq(COUNT, 2, 2),
            "scale": pair(num(0, 1, open_low=True)),
            "ratio": pair(POSITIVE),
            "resample": RESAMPLE,
            "align_corners": BOOL,
            "cropping_mode": OneOf(("slice", "resample")),
        }
    ),
    "kornia.augmentation.ColorJitter": Params(
        {
            **KORNIA_OP,
            "brightness": Either((NON_NEGATIVE, pair(NON_NEGATIVE))),
            "contrast": Either((NON_NEGATIVE, pair(NON_NEGATIVE))),
            "saturation": Either((NON_NEGATIVE, pair(NON_NEGATIVE))),
            "hue": Either((num(0, 0.5), pair(num(-0.5, 0.5)))),
        }
    ),
    "kornia.augmentation.RandomGrayscale": Params({**KORNIA_OP, "rgb_weights": opt(Seq(NON_NEGATIVE, 3, 3))}),
    # BYOL's asymmetric views (conf/model/common/asymmetric_views.yaml)
    "kornia.augmentation.RandomGaussianBlur": Params(
        {
            **KORNIA_OP,
            "kernel_size": Either((integer(1, 255), Seq(integer(1, 255), 2, 2))),
            "sigma": Seq(POSITIVE, 2, 2, ordered=True),
            "border_type": OneOf(("constant", "reflect", "replicate", "circular")),
            "separable": BOOL,
        }
    ),
    "kornia.augmentation.RandomSolarize": Params(
        {
            **KORNIA_OP,
            "thresholds": Either((num(0, 0.5), pair(num(0, 1)))),
            "additions": Either((num(0, 0.5), pair(num(-0.5, 0.5)))),
        }
    ),
    "kornia.augmentation.RandomAffine": Params(
        {
            **KORNIA_OP,
            "degrees": Either((num(0, 360), pair(num(-360, 360)))),
            "translate": opt(Seq(num(0, 1), 2, 2)),
            "scale": opt(Either((pair(POSITIVE), Seq(POSITIVE, 4, 4)))),
            "shear": opt(Either((NON_NEGATIVE, Seq(num(-360, 360), 2, 4)))),
            "resample": RESAMPLE,
            "padding_mode": Either((OneOf(("zeros", "border", "reflection", "fill")), integer(0, 3))),
            "align_corners": BOOL,
        }
    ),
    "sslpath.data.stain.RandomHEDJitter": Params(
        {
            "alpha": num(0, 1, open_high=True),
            # optical-density units: a pixel's density spans 0 to -log(1e-6) ≈ 13.8; a larger shift makes
            # every tile black or white, and an infinite one NaN
            "beta": num(0, OD_SCALE),
            "p": PROB,
        }
    ),
    "sslpath.data.stain.RandomRotate90": Params({"p": PROB}),
    # trainer, callbacks, loggers
    "lightning.pytorch.Trainer": Params(
        {
            "default_root_dir": PATH,
            "accelerator": Text(),
            "strategy": Either((Text(), NODE)),
            "devices": Either((integer(-1), Text(), Seq(integer(0), 1))),
            "num_nodes": COUNT,
            "precision": Either((Text(), integer(16, 64))),  # Lightning refuses unknown names when it builds the trainer
            "max_epochs": COUNT,
            "max_steps": integer(-1),
            "check_val_every_n_epoch": opt(COUNT),
            "val_check_interval": opt(Either((COUNT, num(0, 1, open_low=True)))),
            "log_every_n_steps": COUNT,
            "num_sanity_val_steps": integer(-1),
            "limit_train_batches": opt(Either((integer(0), num(0, 1)))),
            "limit_val_batches": opt(Either((integer(0), num(0, 1)))),
            "limit_test_batches": opt(Either((integer(0), num(0, 1)))),
            "fast_dev_run": Either((BOOL, integer(0))),
            "accumulate_grad_batches": COUNT,
            "gradient_clip_val": opt(NON_NEGATIVE),
            "gradient_clip_algorithm": opt(OneOf(("norm", "value"))),
            "deterministic": opt(Either((BOOL, OneOf(("warn",))))),
            "benchmark": opt(BOOL),
            "sync_batchnorm": BOOL,
            "enable_model_summary": opt(BOOL),
            "enable_progress_bar": opt(BOOL),
            "enable_checkpointing": opt(BOOL),
            "plugins": opt(Seq(NODE)),
            "profiler": opt(Either((NODE, OneOf(("simple", "advanced", "pytorch"))))),
        },
        _sync_batchnorm,
    ),
    "lightning.pytorch.callbacks.ModelCheckpoint": Params(
        {
            **CHECKPOINT_DIR,
            "monitor": MONITOR,  # and a metric the model logs: validate.check_metrics
            "mode": MODE,
            "save_top_k": integer(-1),
            "save_last": opt(Either((BOOL, OneOf(("link",))))),
            "auto_insert_metric_name": BOOL,
            "every_n_epochs": opt(integer(0)),
            "verbose": BOOL,
        }
    ),
    "lightning.pytorch.callbacks.EarlyStopping": Params(
        {
            "monitor": MONITOR,  # and a metric the model logs: validate.check_metrics
            "mode": MODE,
            "patience": integer(0),
            "min_delta": NON_NEGATIVE,
            "check_finite": BOOL,
            "stopping_threshold": opt(num()),
            "divergence_threshold": opt(num()),
            "verbose": BOOL,
            "strict": BOOL,
            "check_on_train_epoch_end": opt(BOOL),
        }
    ),
    "lightning.pytorch.callbacks.LearningRateMonitor": Params(
        {"logging_interval": opt(OneOf(("step", "epoch"))), "log_momentum": BOOL, "log_weight_decay": BOOL}
    ),
    "lightning.pytorch.callbacks.RichProgressBar": Params({"refresh_rate": integer(0), "leave": BOOL}),
    "lightning.pytorch.callbacks.TQDMProgressBar": Params({"refresh_rate": integer(0), "leave": BOOL}),
    "sslpath.training.callbacks.EpochLog": Params({}),
    "sslpath.training.callbacks.SlimBestCheckpoint": Params({}),
    "sslpath.training.callbacks.FiniteLoss": Params({}),
    "sslpath.training.callbacks.KeepLastCheckpoint": Params({"dirpath": PATH, "keep": BOOL}),
    "sslpath.training.callbacks.EmbeddingProjector": Params({"max_images": integer(0), "seed": SEED}),
    "sslpath.training.callbacks.EpochSeed": Params({"seed": SEED}),
    "sslpath.training.callbacks.InterruptCheckpoint": Params(CHECKPOINT_DIR),
    "sslpath.training.checkpoint_writer.AtomicCheckpointIO": Params({}),
    "lightning.pytorch.profilers.SimpleProfiler": Params({"dirpath": opt(PATH), "filename": opt(CHECKPOINT_DIR["filename"])}),
    "lightning.pytorch.loggers.TensorBoardLogger": Params(
        {"save_dir": PATH, "name": opt(Text()), "version": opt(Either((FOLDER_NAME, integer(0)))), "default_hp_metric": BOOL}
    ),
    "lightning.pytorch.loggers.CSVLogger": Params(
        {"save_dir": PATH, "name": opt(Text()), "version": opt(Either((FOLDER_NAME, integer(0))))}
    ),
    "lightning.pytorch.loggers.MLFlowLogger": Params(
        {
            "experiment_name": Text(),
            "run_name": opt(Text()),
            "tracking_uri": opt(Text()),
            "artifact_location": opt(PATH),
            "log_model": Either((BOOL, OneOf(("all",)))),
        }
    ),
    # hparams_search=optuna (hydra.sweeper.*: checked when the sweep starts, sslpath.training.hydra_callbacks)
    "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper": Params(
        {
            "n_trials": COUNT,  # 0 trials end in optuna's "No trials are completed yet"
            "n_jobs": COUNT,
            "direction": Either((OneOf(("minimize", "maximize")), Seq(OneOf(("minimize", "maximize")), 1))),
            "study_name": opt(Text()),
            "storage": opt(Text()),
            "max_failure_rate": num(0, 1),
            "sampler": NODE,
            "params": opt(NODE),
        }
    ),
    "optuna.samplers.TPESampler": Params({"seed": opt(SEED), "n_startup_trials": integer(0)}),
}

# Settings no class receives, by config path (train.yaml's own keys and paths/).
PATHS: dict[str, Rule] = {
    "seed": SEED,
    "run_name": TEXT,
    "ckpt_path": opt(Either((OneOf(("last",)), PATH))),
    "resume": opt(PATH),
    "optimized_metric": MONITOR,  # and a metric the model logs: validate.check_metrics
    "report": BOOL,
    "paths.data_dir": PATH,
    "paths.log_dir": PATH,
    "paths.output_dir": PATH,
    "paths.pretrain_dir": PATH,
    # label-efficiency protocol (sslpath.training.protocol)
    "budget": OneOf(("epochs", "steps")),
    "selection": OneOf(("best_val", "val_subset", "last")),
    # frozen-feature evaluation at the end of SSL runs (sslpath.evaluation.features)
    "frozen_eval.enabled": BOOL,
    "frozen_eval.knn_k": integer(1, 10_000),
    "frozen_eval.knn_temperature": POSITIVE,
    "frozen_eval.l2": Seq(num(0), 1, 64),
    "frozen_eval.max_iter": integer(1, 100_000),
    "frozen_eval.batch_size": COUNT,
    # intervals and calibration of the test metrics (conf/eval/default.yaml; docs/evidence.md)
    "eval.bootstrap_resamples": integer(*RESAMPLES_RANGE),
    "eval.bootstrap_seed": integer(*SEED_RANGE),
    "eval.ci_level": num(*LEVEL_RANGE),
    "eval.ece_bins": integer(1, 1000),
}

TARGET_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def rows_of(params: Sequence[Params]) -> dict[str, Rule]:
    """The rows of a class and its bases (most specific first): a subclass's row replaces its base's."""
    rows: dict[str, Rule] = {}
    for p in reversed(params):
        rows.update(p.rows)
    return rows
