"""The rules a user-set value is checked by (`Rule` and its kinds: numbers, booleans, choices, texts,
paths, sequences), the named ranges the schema reuses, and the relation checks between a class's
parameters. The schema itself, which value follows which rule, is sslpath.checks.schema.

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

from sslpath.core.errors import UserError
from sslpath.data.npz import memory_budget
from sslpath.data.synthetic import synthetic_bytes

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
        raise UserError(
            f"{path}.momentum_start={start} is above {path}.momentum_end={end}: the momentum rises from start to end "
            "over training (e.g. 0.99 -> 1.0). Swap them or set them equal for a constant momentum."
        )


def _nesterov(node: DictConfig, path: str) -> None:
    if node.get("nesterov") and (not node.get("momentum") or node.get("dampening", 0)):
        raise UserError(
            f"{path}.nesterov=true needs {path}.momentum > 0 and {path}.dampening=0 (got momentum="
            f"{node.get('momentum')}, dampening={node.get('dampening', 0)}). Set {path}.nesterov=false, or a momentum "
            "such as 0.9."
        )


def _synthetic_memory(node: DictConfig, path: str) -> None:
    """Synthetic tiles (uint8, drawn in bounded float64 chunks: sslpath.data.synthetic): refused before a
    count too large for this machine ends in a MemoryError."""
    counts = {k: node.get(k) for k in ("train_count", "val_count", "test_count")}
    size = node.get("size")
    if not all(is_number(v) for v in (*counts.values(), size)):
        return
    need = synthetic_bytes(int(size), {k: int(v) for k, v in counts.items()})
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

    accelerator = str(node.get("accelerator", "auto"))
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        raise UserError(
            f"{path}.sync_batchnorm=true (trainer=ddp) needs GPUs, but this run would use the CPU ({path}.accelerator="
            f"{accelerator}). Set {path}.sync_batchnorm=false, or use trainer=cpu / trainer=default here."
        )


def _stain_reference(node: DictConfig, path: str) -> None:
    """A reference without a normalisation would be silently unused."""
    if node.get("stain_reference") is not None and node.get("stain_norm", "none") == "none":
        raise UserError(
            f"{path}.stain_reference={node.stain_reference} but {path}.stain_norm=none, so nothing would use it; set "
            f"{path}.stain_norm=reinhard or macenko, or leave {path}.stain_reference unset."
        )


TARGET_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def rows_of(params: Sequence[Params]) -> dict[str, Rule]:
    """The rows of a class and its bases (most specific first): a subclass's row replaces its base's."""
    rows: dict[str, Rule] = {}
    for p in reversed(params):
        rows.update(p.rows)
    return rows
