"""The robustness record (robustness.json): one model's accuracy on a clean split and under each
corruption × severity, written by sslpath.evaluate (corruptions=…) and read back, as untrusted data, by
the robustness comparison: every value type- and range-checked, and its summary checked against its rows.
"""

from __future__ import annotations

import math
import reprlib
from pathlib import Path
from typing import Any, Protocol

from sslpath.core.errors import UserError
from sslpath.core.files import read_untrusted_json
from sslpath.core.names import text_name
from sslpath.data.corruptions import MAX_SEVERITY
from sslpath.results.values import Problems, is_number, is_rate, or_null, whole

STEM = "robustness"  # one model: <dir>/robustness.{json,csv,md,png}
JSON = f"{STEM}.json"
# Recorded in robustness.json: results under another convention (sslpath's earlier 224 px-scaled blurs)
# are not compared with these.
CONVENTION = "medmnist-c parameters in px of the tile, reference rounding"
SOURCE = (
    "MedMNIST-C-style corruptions (Di Salvo et al. 2024, after ImageNet-C, Hendrycks & Dietterich 2019) "
    "re-implemented on tensors in sslpath.data.corruptions; parameters and sources in conf/corruptions/"
)
ROW_KEYS = ("corruption", "severity", "param", "acc", "auc", "loss", "relative_drop")  # what each row holds
# Bounds on a robustness.json read back (it is untrusted): ours are tens of kilobytes, 11 corruptions long.
MAX_RECORD_BYTES = 16 * 2**20
MAX_CORRUPTIONS = 100
MAX_NAME_CHARS = 200  # a run, model or corruption name
SHOWN_PROBLEMS = 4  # problems one message lists


class Benchmarked(Protocol):
    """What a benchmark gives (sslpath.evaluation.benchmark.Robustness)."""

    def rows(self) -> list[dict[str, Any]]: ...

    def summary(self) -> dict[str, Any]: ...

    @property
    def params(self) -> dict[str, list[Any]]: ...


def relative_drop(clean: float, acc: float) -> float | None:
    """(clean − corrupted) / clean accuracy: the share of the clean accuracy a corruption costs."""
    return (clean - acc) / clean if clean > 0 else None


def robustness_record(robustness: Benchmarked, name: str, kind: str, ckpt_path: str) -> dict[str, Any]:
    """What robustness.json holds: plain values a comparison can be rebuilt from."""
    return {
        "run_name": name,
        "model": kind,
        "ckpt_path": ckpt_path,
        "summary": robustness.summary(),
        "rows": robustness.rows(),
        "params": {n: list(v) for n, v in robustness.params.items()},
        "convention": CONVENTION,
        "source": SOURCE,
    }


def read_robustness_record(path: Path) -> dict[str, Any]:
    """robustness.json as plain data, every value the comparison reads type- and range-checked, and its
    summary agreeing with its rows; a UserError naming the first problems otherwise."""
    try:
        record = read_untrusted_json(path, MAX_RECORD_BYTES)
    except ValueError as err:
        raise _bad_record(path, [f"it {err}"]) from None
    if not isinstance(record, dict):
        raise _bad_record(path, ["it holds no JSON object"])
    problems = record_problems(record)
    if problems:
        raise _bad_record(path, problems)
    return record


def _bad_record(path: Path, problems: list[str]) -> UserError:
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return UserError(
        f"{path} is not a robustness.json as sslpath.evaluate writes it: {text_name('; '.join(problems[:SHOWN_PROBLEMS]))}"
        f"{more}. Nothing was written. Re-run that evaluation (python -m sslpath.evaluate ckpt=… corruptions=pathology "
        "out=DIR), or leave it out."
    )


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != "" and len(value) <= MAX_NAME_CHARS


RATE, RATE_OR_NULL = "a number from 0 to 1", "a number from 0 to 1, or null"
TEXT = f"a non-empty text of at most {MAX_NAME_CHARS} characters"
INTERVAL = "[lo, hi] (two numbers from 0 to 1, lo <= hi), or null"
SPAN = "[lo, hi] (two numbers, lo <= hi), or null"


def record_problems(record: dict[str, Any]) -> list[str]:
    """What is wrong with a parsed robustness.json (nothing: an empty list). Each part is checked only
    once the parts it relies on passed: the top-level types, the summary, the params, each row, and
    last whether the summary agrees with the rows."""
    for part in (_top_problems, _summary_problems, _params_problems, _rows_problems, _agreement_problems):
        problems = part(record)
        if problems:
            return problems
    return []


def _top_problems(record: dict[str, Any]) -> list[str]:
    check = Problems()
    for key, ok, what in (
        ("run_name", _is_text, TEXT),
        ("model", _is_text, TEXT),
        ("summary", lambda v: isinstance(v, dict), "an object"),
        ("rows", lambda v: isinstance(v, list), "a list"),
        ("params", lambda v: isinstance(v, dict), "an object"),
    ):
        if key not in record:
            check.problems.append(f"`{key}` is missing")
        else:
            check(key, record[key], ok, what)
    for key, ok, what in (  # optional: only shown
        ("ckpt_path", or_null(lambda v: isinstance(v, str) and len(v) <= 4096), "a path, or null"),
        ("reference_size", whole(1, 100_000), "a whole number of pixels from 1 to 100000"),
        ("source", lambda v: isinstance(v, str) and len(v) <= 4096, "a text of at most 4096 characters"),
    ):
        if key in record:
            check(key, record[key], ok, what)
    return check.problems


def _summary_problems(record: dict[str, Any]) -> list[str]:

    def names(v: Any) -> bool:
        distinct = len(set(v)) == len(v) and "clean" not in v  # "clean" names the uncorrupted row
        return isinstance(v, list) and 0 < len(v) <= MAX_CORRUPTIONS and all(map(_is_text, v)) and distinct

    def severities(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(map(whole(1, MAX_SEVERITY), v)) and v == sorted(set(v))

    check, summary = Problems(), record["summary"]
    for key, ok, what in (
        ("clean_acc", is_rate, RATE),
        ("clean_auc", or_null(is_rate), RATE_OR_NULL),
        ("mean_corruption_acc", is_rate, RATE),
        ("mean_corruption_auc", or_null(is_rate), RATE_OR_NULL),
        ("relative_drop", or_null(is_number), "a number, or null"),
        ("corruptions", names, f"a list of 1 to {MAX_CORRUPTIONS} distinct corruption names (not 'clean')"),
        ("severities", severities, f"an ascending list of distinct severities from 1 to {MAX_SEVERITY}"),
        ("seed", whole(0, 2**63 - 1), "a whole number from 0 to 2**63-1"),
        ("num_images", whole(1, 10**9), "a whole number of images from 1 to 10**9"),
    ):
        if key not in summary:
            check.problems.append(f"`summary.{key}` is missing")
        else:
            check(f"summary.{key}", summary[key], ok, what)
    if check.problems:
        return check.problems
    corruptions, count = summary["corruptions"], len(summary["severities"])
    for key, ok, what in (  # optional: records written before intervals were stored have none
        *((f"clean_{m}_ci", or_null(is_interval), INTERVAL) for m in ("acc", "auc")),
        *((f"mean_corruption_{m}_ci", or_null(is_interval), INTERVAL) for m in ("acc", "auc")),
        *(
            (
                f"corruption_{m}_ci",
                lambda v: isinstance(v, dict) and list(v) == corruptions and all(map(or_null(is_interval), v.values())),
                f"an object of one {INTERVAL} per corruption",
            )
            for m in ("acc", "auc")
        ),
        *(
            (
                f"severity_{m}_ci",
                lambda v: isinstance(v, list) and len(v) == count and all(map(or_null(is_interval), v)),
                f"a list of one {INTERVAL} per severity",
            )
            for m in ("acc", "auc")
        ),
        ("relative_drop_ci", or_null(is_span), SPAN),
        ("bootstrap", lambda v: isinstance(v, dict) and is_rate(v.get("level")), "an object with a `level` from 0 to 1"),
    ):
        if key in summary:
            check(f"summary.{key}", summary[key], ok, what)
    for value, ci in (
        ("clean_auc", "clean_auc_ci"),
        ("mean_corruption_auc", "mean_corruption_auc_ci"),
        ("relative_drop", "relative_drop_ci"),
    ):
        if summary[value] is None and summary.get(ci) is not None:
            check.problems.append(f"`summary.{ci}` is an interval of `summary.{value}`, which is null")
    return check.problems


def is_interval(value: Any) -> bool:
    """[lo, hi], two rates with lo <= hi."""
    return is_span(value) and all(map(is_rate, value))


def is_span(value: Any) -> bool:
    """[lo, hi], two numbers with lo <= hi (a relative drop's interval: a corruption may raise the accuracy)."""
    return isinstance(value, list) and len(value) == 2 and all(map(is_number, value)) and value[0] <= value[1]


def _params_problems(record: dict[str, Any]) -> list[str]:

    check, names = Problems(), record["summary"]["corruptions"]
    if check("params", record["params"], lambda v: list(v) == names, f"an object with one entry per corruption {names}"):
        for key, values in record["params"].items():
            is_list = lambda v: isinstance(v, list) and len(v) == MAX_SEVERITY  # noqa: E731
            check(f"params.{key}", values, is_list, f"a list of {MAX_SEVERITY} parameters (severities 1 to {MAX_SEVERITY})")
    return check.problems


def _expected_rows(record: dict[str, Any]) -> list[tuple[str, int]]:
    summary = record["summary"]
    return [("clean", 0), *((name, s) for name in summary["corruptions"] for s in summary["severities"])]


def _rows_problems(record: dict[str, Any]) -> list[str]:

    check, expected, clean_acc = Problems(), _expected_rows(record), record["summary"]["clean_acc"]
    if len(record["rows"]) != len(expected):
        return [f"`rows` has {len(record['rows'])} rows, not {len(expected)} (clean, then each corruption × severity)"]
    has_keys = lambda v: isinstance(v, dict) and set(ROW_KEYS) <= set(v)  # noqa: E731
    for i, (row, (corruption, severity)) in enumerate(zip(record["rows"], expected, strict=True)):
        where = f"rows[{i}]"
        if not check(where, row, has_keys, f"an object with {', '.join(ROW_KEYS)}"):
            continue
        param = None if corruption == "clean" else record["params"][corruption][severity - 1]
        check(f"{where}.corruption", row["corruption"], lambda v, c=corruption: v == c, repr(corruption))
        check(f"{where}.severity", row["severity"], lambda v, sev=severity: type(v) is int and v == sev, str(severity))
        check(f"{where}.param", row["param"], lambda v, p=param: v == p, f"{reprlib.repr(param)}, as in params")
        check(f"{where}.auc", row["auc"], or_null(is_rate), RATE_OR_NULL)
        check(f"{where}.loss", row["loss"], or_null(lambda v: is_number(v) and v >= 0), "a number >= 0, or null")
        for key, ok, what in (
            ("acc_ci", is_interval, INTERVAL),
            ("auc_ci", is_interval, INTERVAL),
            ("relative_drop_ci", is_span, SPAN),
        ):
            if key in row:  # optional: records written before intervals were stored have none
                check(f"{where}.{key}", row[key], or_null(ok), what)
        if row["auc"] is None and row.get("auc_ci") is not None:
            check.problems.append(f"`{where}.auc_ci` is an interval of `{where}.auc`, which is null")
        if check(f"{where}.acc", row["acc"], is_rate, RATE):
            drop = relative_drop(clean_acc, row["acc"])
            check(
                f"{where}.relative_drop",
                row["relative_drop"],
                lambda v, d=drop: _agrees(v, d),
                f"{_shown(drop)}, from the accuracies",
            )
    return check.problems


def _agreement_problems(record: dict[str, Any]) -> list[str]:
    """The summary is what its rows give: an edited number shows up as a disagreement."""

    rows, summary = record["rows"], record["summary"]
    accs = [row["acc"] for row in rows[1:]]
    aucs = [row["auc"] for row in rows[1:] if row["auc"] is not None]
    mca = sum(accs) / len(accs)
    check = Problems()
    for key, value in (
        ("clean_acc", rows[0]["acc"]),
        ("clean_auc", rows[0]["auc"]),
        ("mean_corruption_acc", mca),
        ("mean_corruption_auc", sum(aucs) / len(aucs) if aucs else None),
        ("relative_drop", relative_drop(summary["clean_acc"], mca)),
    ):
        check(f"summary.{key}", summary[key], lambda v, x=value: _agrees(v, x), f"{_shown(value)}, what its rows give")
    return check.problems


def _shown(value: float | None) -> str:
    return "null" if value is None else f"{value:.6g}"


def _agrees(value: Any, expected: float | None) -> bool:
    """Equal up to rounding (the numbers went through JSON, and a mean may add in another order)."""
    if value is None or expected is None:
        return value is None and expected is None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12)
