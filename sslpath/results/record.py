"""The run record: what metrics.json holds, one schema for a training run and an evaluation alike.

Written by training (sslpath.training.fit) and by evaluation (sslpath.evaluation.evaluate) through
`write_record`; read back by reports, tracking and the chain's stage reuse through `read_record`, which
treats the file as untrusted data: an unknown, missing or ill-typed field is a UserError naming it.
A field is one line below: required fields first, then optional ones (None: not recorded, left out of
the file). Adding a key to metrics.json is adding one line here.
"""

from __future__ import annotations

import dataclasses
import json
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslpath.core.errors import UserError
from sslpath.core.files import atomic_write_json, read_untrusted_json
from sslpath.results.values import Check, is_int, is_name, is_number, is_rate, or_null

METRICS_FILE = "metrics.json"
SCHEMA_VERSION = 1  # bump when a field changes meaning or a required one is added
MAX_EPOCHS = 10**7  # more is no real run: an edited or corrupt metrics.json
MAX_WALL_SECONDS = 10**9  # about 32 years
MAX_PATH = 4096
RATE, RATE_OR_NULL = "a number from 0 to 1", "a number from 0 to 1, or null"
INTERVAL = "an interval [lo, hi] of numbers from 0 to 1"
BUDGETS = ("epochs", "steps")  # conf/train.yaml `budget` (sslpath.training.protocol)
SELECTIONS = ("best_val", "val_subset", "last")  # conf/train.yaml `selection`
JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
RERUN = (
    "Re-run the run's test stage with the current sslpath.train (`python -m sslpath.train ckpt_path=last "
    "hydra.run.dir=<run dir>` plus its original overrides), or leave the run out of the report."
)


def required(check: Check, what: str) -> Any:
    return field(metadata={"check": check, "what": what})


def optional(check: Check, what: str, null_written: bool = False) -> Any:
    """A field a record may lack (or hold null): not every run has it. `null_written`: metrics.json holds it
    even when null (a run that measured nothing there says so: no monitored metric, no AUC)."""
    return field(default=None, metadata={"check": or_null(check), "what": f"{what}, or null", "null_written": null_written})


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_PATH


def _interval(value: Any) -> bool:
    """A bootstrap interval [lo, hi] of a rate."""
    return isinstance(value, list) and len(value) == 2 and all(map(is_rate, value)) and value[0] <= value[1]


def _bootstrap(value: Any) -> bool:
    """How the intervals were made (sslpath.results.stats.Bootstrap.to_dict)."""
    return (
        isinstance(value, dict)
        and set(value) == {"resamples", "seed", "level"}
        and is_int(value["resamples"])
        and value["resamples"] > 0
        and is_int(value["seed"])
        and is_number(value["level"])
        and 0 < value["level"] < 1
    )


def _count(value: Any) -> bool:
    return is_int(value) and value >= 0


def _per_class(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and (v is None or is_rate(v)) for k, v in value.items())


@dataclass(frozen=True)
class RunRecord:
    """One finished run's (or evaluation's) settings and test results, as plain values."""

    model: str = required(is_name, "the model kind, a non-empty string")
    run_name: str = required(is_name, "a non-empty string")
    seed: int = required(is_int, "an integer")
    label_fraction: float = required(lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1]")
    test_loss: float = required(is_number, "a number")
    test_acc: float = required(is_rate, RATE)
    test_auc: float | None = required(or_null(is_rate), RATE_OR_NULL)
    per_class_acc: dict[str, float | None] = required(_per_class, "an object {class name: accuracy or null}")
    absent_classes: list[str] = required(lambda v: isinstance(v, list) and all(map(is_name, v)), "a list of class names")
    epochs: int = required(lambda v: is_int(v) and 0 <= v <= MAX_EPOCHS, f"an integer from 0 to {MAX_EPOCHS:,}")
    wall_seconds: float = required(
        lambda v: is_number(v) and 0 <= v <= MAX_WALL_SECONDS, f"a number of seconds from 0 to {MAX_WALL_SECONDS:,}"
    )
    ckpt_path: str | None = required(or_null(_is_path), "the tested checkpoint's path, or null (a fast_dev_run)")
    # --- optional: one line each ---
    train_labels_per_class: float | None = optional(lambda v: is_number(v) and v > 0, "a positive number")
    # test evidence (sslpath.results.metrics.evidence_results): bootstrap intervals, balanced accuracy, calibration
    test_acc_ci: list[float] | None = optional(_interval, INTERVAL)
    test_balanced_acc: float | None = optional(is_rate, RATE)
    test_balanced_acc_ci: list[float] | None = optional(_interval, INTERVAL)
    test_auc_ci: list[float] | None = optional(_interval, INTERVAL, null_written=True)
    test_ece: float | None = optional(is_rate, RATE)
    ece_bins: int | None = optional(lambda v: is_int(v) and v > 0, "a positive integer")
    bootstrap: dict[str, Any] | None = optional(_bootstrap, "an object {resamples, seed, level}")
    best_val_acc: float | None = optional(is_rate, RATE, null_written=True)
    val_knn_acc: float | None = optional(is_rate, RATE)
    optimized_metric: str | None = optional(is_name, "a metric name")
    optimized_value: float | None = optional(is_number, "a number", null_written=True)
    optimizer_steps: int | None = optional(_count, "a non-negative integer")
    # the label-efficiency protocol (sslpath.training.protocol): training length and checkpoint choice
    budget: str | None = optional(lambda v: v in BUDGETS, f"one of {', '.join(BUDGETS)}")
    selection: str | None = optional(lambda v: v in SELECTIONS, f"one of {', '.join(SELECTIONS)}")
    selection_val_images: int | None = optional(_count, "a non-negative integer")
    momentum_start: float | None = optional(is_rate, RATE)  # momentum methods: the run's m_start
    target_init_share: float | None = optional(is_rate, RATE)  # momentum methods: random init left in the target
    # SSL runs: frozen-feature evaluation of the tested checkpoint (sslpath.evaluation.features)
    frozen_knn_acc: float | None = optional(is_rate, RATE)
    frozen_knn_val_acc: float | None = optional(is_rate, RATE)
    frozen_linear_acc: float | None = optional(is_rate, RATE)
    frozen_linear_val_acc: float | None = optional(is_rate, RATE)
    frozen_linear_train_acc: float | None = optional(is_rate, RATE)
    frozen_linear_l2: float | None = optional(lambda v: is_number(v) and v >= 0, "a non-negative number")
    frozen_train_images: int | None = optional(_count, "a non-negative integer")
    pretrained_ckpt: str | None = optional(_is_path, "a path")  # fine-tunes: the SSL checkpoint they started from
    pretrain_method: str | None = optional(is_name, "an SSL model kind")  # fine-tunes: its method
    freeze_backbone: bool | None = optional(lambda v: isinstance(v, bool), "true or false")  # fine-tunes: a probe?
    evaluated_split: str | None = optional(lambda v: v in ("train", "val", "test"), "train, val or test")  # evaluations
    num_images: int | None = optional(lambda v: is_int(v) and v > 0, "a positive integer")  # evaluations
    data: dict[str, Any] | None = optional(lambda v: isinstance(v, dict), "an object of data settings")  # evaluations
    temperature_scaling: dict[str, Any] | None = optional(lambda v: isinstance(v, dict), "an object")  # calibrate=true
    robustness: dict[str, Any] | None = optional(lambda v: isinstance(v, dict), "an object")  # corruptions=…: summary
    tta: bool | None = optional(lambda v: isinstance(v, bool), "true or false")  # evaluations: test-time augmentation
    tta_plain: dict[str, Any] | None = optional(lambda v: isinstance(v, dict), "an object")  # tta=true: plain results
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """What metrics.json holds: every required field, each optional one that was recorded, and the
        null_written ones."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in values.items() if v is not None or not _is_optional(k) or _FIELDS[k].metadata["null_written"]}

    def checked(self, where: str = "this run") -> RunRecord:
        """The record itself once every field holds what its line says; a UserError otherwise (never writes
        what could not be read back)."""
        problems = _problems(self.to_dict())
        if problems:
            raise UserError(f"{where}: the run record is malformed: {'; '.join(problems)}. This is a bug in sslpath.")
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(RunRecord)}


def _is_optional(name: str) -> bool:
    return _FIELDS[name].default is None


def _problems(data: dict[str, Any]) -> list[str]:
    problems = [f"`{k}` is missing" for k, f in _FIELDS.items() if f.default is dataclasses.MISSING and k not in data]
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        problems.append(f"has unknown field(s) {', '.join(map(repr, unknown))}")
    for key, value in data.items():
        f = _FIELDS.get(key)
        if f is not None and "check" in f.metadata and not f.metadata["check"](value):
            problems.append(f"`{key}` is {reprlib.repr(value)}, not {f.metadata['what']}")
    if "schema_version" not in data:
        problems.append("`schema_version` is missing (a record written before run records had one, or not by sslpath)")
    elif data["schema_version"] != SCHEMA_VERSION:
        problems.append(
            f"`schema_version` is {reprlib.repr(data['schema_version'])}, not {SCHEMA_VERSION} (another sslpath version's)"
        )
    return problems


def write_record(run_dir: Path, record: RunRecord) -> Path:
    """metrics.json in run_dir, atomically: strict JSON (a NaN or infinity is refused before writing)."""
    data = record.checked(str(run_dir)).to_dict()
    try:
        json.dumps(data, allow_nan=False)
    except ValueError:
        raise UserError(
            f"{run_dir}: the run gave NaN or infinite metrics, which would be silently wrong numbers; {METRICS_FILE} was not "
            "written. The checkpoint is damaged or its training diverged: use another checkpoint of the run."
        ) from None
    return atomic_write_json(Path(run_dir) / METRICS_FILE, data)


def read_record(path: Path, fix: str = RERUN) -> RunRecord:
    """metrics.json read as untrusted data against RunRecord; a UserError naming every problem and `fix`."""
    try:
        data = read_untrusted_json(path)
    except ValueError as err:
        raise _invalid(path, f"{err}{': no run measures infinity' if 'finite' in str(err) else ''}", fix) from None
    if not isinstance(data, dict):
        raise _invalid(path, f"holds {JSON_TYPES.get(type(data), 'null')}, not an object of metrics", fix)
    problems = _problems(data)
    if problems:
        raise _invalid(path, "is incomplete or malformed: " + "; ".join(problems), fix)
    return RunRecord(**data)


def _invalid(path: Path, problem: str, fix: str) -> UserError:
    return UserError(f"{path} {problem}. {fix}")
