"""Robustness tables and figures: one model under each corruption × severity, and models compared.

    python -m sslpath.robustness_report DIR... [--out DIR] [--formats png,pdf] [--dpi 150]

`sslpath.evaluate ckpt=… corruptions=pathology` writes one model's robustness.json/.csv/.md/.png;
this command compares every robustness.json at or below each DIR (evaluation folders, or a sweep of
`experiment=robustness`, whose jobs keep theirs in <job>/robustness/) in robustness_comparison.md/.csv/.png.
`SweepRobustness`, the Hydra callback experiment=robustness adds, benchmarks each job's best checkpoint
when the sweep ends and writes the comparison into <sweep>/robustness/. Figures reuse sslpath.report's
canvas, saving and model-kind colours.
"""

from __future__ import annotations

import argparse
import json
import math
import reprlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sslpath.core.errors import UserError, exit_on_user_error

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from sslpath.evaluation.corruptions import Robustness, Suite

STEM = "robustness"  # one model: <dir>/robustness.{json,csv,md,png}
COMPARISON = "robustness_comparison"  # several: <out>/robustness_comparison.{csv,md,png}
SOURCE = (
    "MedMNIST-C-style corruptions (Di Salvo et al. 2024, after ImageNet-C, Hendrycks & Dietterich 2019) "
    "re-implemented on tensors in sslpath.evaluation.corruptions; parameters and sources in conf/corruptions/"
)
CSV_FIELDS = ("model", "run_name", "corruption", "severity", "param", "acc", "auc", "loss", "relative_drop")
ROW_KEYS = CSV_FIELDS[2:]  # what each record row holds
# Bounds on a robustness.json read back (it is untrusted): ours are tens of kilobytes, 11 corruptions long.
MAX_RECORD_BYTES = 16 * 2**20
MAX_CORRUPTIONS = 100
MAX_NAME_CHARS = 200  # a run, model or corruption name
SHOWN_PROBLEMS = 4  # problems one message lists


# ----------------------------------------------------------------------------------------------
# One model


def to_record(robustness: Robustness, name: str, kind: str, ckpt_path: str) -> dict[str, Any]:
    """What robustness.json holds: plain values a comparison can be rebuilt from."""
    from sslpath.evaluation.corruptions import CONVENTION

    suite = robustness.suite
    return {
        "run_name": name,
        "model": kind,
        "ckpt_path": ckpt_path,
        "summary": robustness.summary(),
        "rows": robustness.rows(),
        "params": {n: list(v) for n, v in suite.params.items()},
        "convention": CONVENTION,
        "source": SOURCE,
    }


def write_robustness(
    out: Path, robustness: Robustness, name: str, kind: str, ckpt_path: str, formats: Sequence[str] = ("png",), dpi: int = 150
) -> dict[str, Any]:
    """robustness.json/.csv/.md and the figure in out; returns the record."""
    from sslpath.core.files import atomic_write_json, atomic_write_text
    from sslpath.report import save_figure

    record = to_record(robustness, name, kind, ckpt_path)
    save_figure(robustness_figure(record), out / STEM, formats, dpi)
    atomic_write_text(out / f"{STEM}.csv", records_csv([record]))
    atomic_write_text(out / f"{STEM}.md", record_markdown(record, formats))
    atomic_write_json(out / f"{STEM}.json", record)  # last: its presence marks a complete set
    return record


def copy_robustness(src: Path, dest: Path) -> None:
    """The tables and figures (not the .json, so a search for robustness.json finds each model once) into dest."""
    from sslpath.core.files import atomic_write_bytes

    for path in sorted(src.glob(f"{STEM}.*")):
        if path.suffix != ".json":
            atomic_write_bytes(dest / path.name, path.read_bytes())


def _severities(record: dict[str, Any]) -> list[int]:
    return list(record["summary"]["severities"])


def _table(record: dict[str, Any], key: str) -> dict[str, dict[int, float | None]]:
    """corruption -> severity -> acc or auc (severity 0: clean)."""
    table: dict[str, dict[int, float | None]] = {}
    for row in record["rows"]:
        table.setdefault(row["corruption"], {})[row["severity"]] = row[key]
    return table


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _fmt(value: float | None, scale: float = 100, digits: int = 1) -> str:
    return "—" if value is None else f"{value * scale:.{digits}f}"


def severity_means(record: dict[str, Any], key: str = "acc") -> list[float | None]:
    """Mean over corruptions at each severity, after the clean value at severity 0."""
    table = _table(record, key)
    corrupted = [t for name, t in table.items() if name != "clean"]
    return [table["clean"][0], *(_mean([t[s] for t in corrupted]) for s in _severities(record))]


def _grid(record: dict[str, Any], key: str, scale: float, digits: int) -> str:
    severities = _severities(record)
    table = _table(record, key)
    lines = [
        "| corruption | " + " | ".join(map(str, severities)) + " | mean |",
        "| --- |" + " ---: |" * (len(severities) + 1),
    ]
    for name, by in table.items():
        if name != "clean":
            cells = [by[s] for s in severities]
            lines.append(f"| {name} | " + " | ".join(_fmt(v, scale, digits) for v in [*cells, _mean(cells)]) + " |")
    means = severity_means(record, key)[1:]
    lines.append("| **mean** | " + " | ".join(_fmt(v, scale, digits) for v in [*means, _mean(means)]) + " |")
    return "\n".join(lines) + "\n"


def record_markdown(record: dict[str, Any], formats: Sequence[str] = ("png",)) -> str:
    from sslpath.report import _embed

    s = record["summary"]
    severities = _severities(record)
    params = "\n".join(f"| {n} | " + " | ".join(json.dumps(p) for p in v) + " |" for n, v in record["params"].items())
    return "\n".join(
        [
            f"# Robustness: {record['run_name']}\n",
            f"{record['model']} model `{record['ckpt_path']}` on {s['num_images']} test images. Clean accuracy "
            f"{_fmt(s['clean_acc'])}% (AUC {_fmt(s['clean_auc'], 1, 3)}); mean corruption accuracy (mCA, over "
            f"{len(s['corruptions'])} corruptions × {len(severities)} severities) {_fmt(s['mean_corruption_acc'])}% "
            f"(AUC {_fmt(s['mean_corruption_auc'], 1, 3)}); relative drop from clean {_fmt(s['relative_drop'])}%.\n",
            "## Accuracy (%) per corruption and severity\n",
            _grid(record, "acc", 100, 1),
            "## AUC per corruption and severity\n",
            _grid(record, "auc", 1, 3),
            _embed(STEM, formats) + "\n",
            f"## Corruptions\n\n{record['source']}. Seed {s['seed']}; spatial parameters in px of the tile itself, as "
            "MedMNIST-C applies them (docs/robustness/corruption_strength.md). Parameter per severity:\n",
            "| corruption | " + " | ".join(map(str, range(1, 1 + len(next(iter(record["params"].values())))))) + " |",
            "| --- |" + " --- |" * len(next(iter(record["params"].values()))),
            params + "\n",
        ]
    )


def records_csv(records: Sequence[dict[str, Any]]) -> str:
    """Long table: one row per model × (clean, corruption × severity); text cells escaped (sslpath.core.files.csv_text)."""
    from sslpath.core.files import csv_text

    table: list[list[Any]] = [list(CSV_FIELDS)]
    for record in records:
        for row in record["rows"]:
            cells = {**row, "model": record["model"], "run_name": record["run_name"]}
            cells["param"] = "" if row["param"] is None else json.dumps(row["param"])
            table.append([cells[field] for field in CSV_FIELDS])
    return csv_text(table)


def _colour_kind(record: dict[str, Any]) -> str:
    """The colour key: the run name when it is a model kind of its own (a probe is a frozen fine-tune), else the kind."""
    from sslpath.report import KIND_COLOURS

    return record["run_name"].lower() if record["run_name"].lower() in KIND_COLOURS else record["model"]


def robustness_figure(record: dict[str, Any]) -> Figure:
    """Accuracy against severity: a thin line per corruption, their mean in the model's colour."""
    from matplotlib import colormaps

    from sslpath.report import _figure, kind_colour

    s = record["summary"]
    xs = [0, *_severities(record)]
    clean = 100 * s["clean_acc"]
    fig = _figure((7.6, 4.4))
    ax = fig.add_subplot()
    palette = colormaps["tab20"].colors
    for i, (name, by) in enumerate((n, by) for n, by in _table(record, "acc").items() if n != "clean"):
        ax.plot(xs, [clean, *(100 * by[x] for x in xs[1:])], color=palette[i % len(palette)], lw=1, marker=".", label=name)
    ax.plot(
        xs,
        [100 * v for v in severity_means(record)],
        color=kind_colour(_colour_kind(record)),
        lw=2.8,
        marker="o",
        label="mean over corruptions",
    )
    ax.axhline(clean, color="0.45", lw=1, ls=":", label=f"clean ({clean:.1f}%)")
    ax.set_xticks(xs)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"{record['run_name']} · mCA {_fmt(s['mean_corruption_acc'])}% · relative drop {_fmt(s['relative_drop'])}%",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


# ----------------------------------------------------------------------------------------------
# Several models


def find_records(paths: Sequence[str | Path]) -> list[Path]:
    """Every robustness.json at or below each path, each once, in path order."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        hits = sorted(p.resolve() for p in path.rglob(f"{STEM}.json")) if path.is_dir() else []
        if path.is_file() and path.name == f"{STEM}.json":
            hits = [path.resolve()]
        if not hits:
            raise UserError(
                f"{path} holds no {STEM}.json, so there is no robustness result to compare. Benchmark a checkpoint "
                "first: python -m sslpath.evaluate ckpt=… corruptions=pathology out=DIR (or train with "
                "experiment=robustness)."
            )
        found.update(dict.fromkeys(hits))
    return list(found)


def read_record(path: Path) -> dict[str, Any]:
    """robustness.json as plain data, every value the comparison reads type- and range-checked, and its
    summary agreeing with its rows; a UserError naming the first problems otherwise."""
    from sslpath.report import _non_finite

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    try:
        size = Path(path).stat().st_size
        if size > MAX_RECORD_BYTES:
            raise ValueError(f"{size:,} bytes, more than the {MAX_RECORD_BYTES:,} a robustness.json can need")
        record = json.loads(Path(path).read_text(), parse_constant=no_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise _bad_record(path, [f"it cannot be read as JSON ({type(err).__name__}: {err})"]) from None
    if not isinstance(record, dict):
        raise _bad_record(path, ["it holds no JSON object"])
    if where := _non_finite(record):
        raise _bad_record(path, [f"it has a number too large to be finite at {where}"])
    problems = record_problems(record)
    if problems:
        raise _bad_record(path, problems)
    return record


def _bad_record(path: Path, problems: list[str]) -> UserError:
    from sslpath.core.names import text_name

    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return UserError(
        f"{path} is not a robustness.json as sslpath.evaluate writes it: {text_name('; '.join(problems[:SHOWN_PROBLEMS]))}"
        f"{more}. Nothing was written. Re-run that evaluation (python -m sslpath.evaluate ckpt=… corruptions=pathology "
        "out=DIR), or leave it out."
    )


class _Checks:
    """Collects `` `where` is VALUE, not WHAT `` for each value that fails its check."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def __call__(self, where: str, value: Any, ok: Callable[[Any], bool], what: str) -> bool:
        if not ok(value):
            self.problems.append(f"`{where}` is {reprlib.repr(value)}, not {what}")
            return False
        return True


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != "" and len(value) <= MAX_NAME_CHARS


def _or_null(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _whole(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda value: type(value) is int and lo <= value <= hi


RATE, RATE_OR_NULL = "a number from 0 to 1", "a number from 0 to 1, or null"
TEXT = f"a non-empty text of at most {MAX_NAME_CHARS} characters"


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
    check = _Checks()
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
        ("ckpt_path", _or_null(lambda v: isinstance(v, str) and len(v) <= 4096), "a path, or null"),
        ("reference_size", _whole(1, 100_000), "a whole number of pixels from 1 to 100000"),
        ("source", lambda v: isinstance(v, str) and len(v) <= 4096, "a text of at most 4096 characters"),
    ):
        if key in record:
            check(key, record[key], ok, what)
    return check.problems


def _summary_problems(record: dict[str, Any]) -> list[str]:
    from sslpath.evaluation.corruptions import MAX_SEVERITY
    from sslpath.report import _is_number, _is_rate

    def names(v: Any) -> bool:
        distinct = len(set(v)) == len(v) and "clean" not in v  # "clean" names the uncorrupted row
        return isinstance(v, list) and 0 < len(v) <= MAX_CORRUPTIONS and all(map(_is_text, v)) and distinct

    def severities(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(map(_whole(1, MAX_SEVERITY), v)) and v == sorted(set(v))

    check, summary = _Checks(), record["summary"]
    for key, ok, what in (
        ("clean_acc", _is_rate, RATE),
        ("clean_auc", _or_null(_is_rate), RATE_OR_NULL),
        ("mean_corruption_acc", _is_rate, RATE),
        ("mean_corruption_auc", _or_null(_is_rate), RATE_OR_NULL),
        ("relative_drop", _or_null(_is_number), "a number, or null"),
        ("corruptions", names, f"a list of 1 to {MAX_CORRUPTIONS} distinct corruption names (not 'clean')"),
        ("severities", severities, f"an ascending list of distinct severities from 1 to {MAX_SEVERITY}"),
        ("seed", _whole(0, 2**63 - 1), "a whole number from 0 to 2**63-1"),
        ("num_images", _whole(1, 10**9), "a whole number of images from 1 to 10**9"),
    ):
        if key not in summary:
            check.problems.append(f"`summary.{key}` is missing")
        else:
            check(f"summary.{key}", summary[key], ok, what)
    return check.problems


def _params_problems(record: dict[str, Any]) -> list[str]:
    from sslpath.evaluation.corruptions import MAX_SEVERITY

    check, names = _Checks(), record["summary"]["corruptions"]
    if check("params", record["params"], lambda v: list(v) == names, f"an object with one entry per corruption {names}"):
        for key, values in record["params"].items():
            is_list = lambda v: isinstance(v, list) and len(v) == MAX_SEVERITY  # noqa: E731
            check(f"params.{key}", values, is_list, f"a list of {MAX_SEVERITY} parameters (severities 1 to {MAX_SEVERITY})")
    return check.problems


def _expected_rows(record: dict[str, Any]) -> list[tuple[str, int]]:
    summary = record["summary"]
    return [("clean", 0), *((name, s) for name in summary["corruptions"] for s in summary["severities"])]


def _rows_problems(record: dict[str, Any]) -> list[str]:
    from sslpath.evaluation.corruptions import relative_drop
    from sslpath.report import _is_number, _is_rate

    check, expected, clean_acc = _Checks(), _expected_rows(record), record["summary"]["clean_acc"]
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
        check(f"{where}.auc", row["auc"], _or_null(_is_rate), RATE_OR_NULL)
        check(f"{where}.loss", row["loss"], _or_null(lambda v: _is_number(v) and v >= 0), "a number >= 0, or null")
        if check(f"{where}.acc", row["acc"], _is_rate, RATE):
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
    from sslpath.evaluation.corruptions import relative_drop

    rows, summary = record["rows"], record["summary"]
    accs = [row["acc"] for row in rows[1:]]
    aucs = [row["auc"] for row in rows[1:] if row["auc"] is not None]
    mca = sum(accs) / len(accs)
    check = _Checks()
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


def check_comparable(records: Sequence[dict[str, Any]], paths: Sequence[Path]) -> None:
    """Models are compared on the same corrupted images: same corruptions, parameters, seed and test split size."""

    def key(r: dict[str, Any]) -> tuple:
        s = r["summary"]
        return (json.dumps(r["params"], sort_keys=True), s["severities"], s["seed"], s["num_images"], r.get("convention"))

    first = key(records[0])
    for record, path in zip(records[1:], paths[1:], strict=True):
        if key(record) != first:
            raise UserError(
                f"{path} was benchmarked on other corruptions, parameters, seed or test images than {paths[0]}; "
                "compare only models benchmarked with the same corruptions=… settings and data."
            )


def _labels(records: Sequence[dict[str, Any]]) -> list[str]:
    """Run names as printable text, made unique with a counter where several share one."""
    from sslpath.core.names import text_name

    names = [text_name(r["run_name"]) for r in records]
    return [n if names.count(n) == 1 else f"{n} ({names[: i + 1].count(n)})" for i, n in enumerate(names)]


def comparison_markdown(records: Sequence[dict[str, Any]], formats: Sequence[str]) -> str:
    from sslpath.report import _embed

    labels = [label.replace("|", "\\|") for label in _labels(records)]  # a | would end the table cell
    head = "| corruption | " + " | ".join(labels) + " |\n| --- |" + " ---: |" * len(labels)
    summary = [
        "| model | clean acc (%) | mCA (%) | relative drop (%) | clean AUC | mean corruption AUC |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in zip(labels, records, strict=True):
        s = r["summary"]
        summary.append(
            f"| {label} | {_fmt(s['clean_acc'])} | {_fmt(s['mean_corruption_acc'])} | {_fmt(s['relative_drop'])} | "
            f"{_fmt(s['clean_auc'], 1, 3)} | {_fmt(s['mean_corruption_auc'], 1, 3)} |"
        )
    tables = [_table(r, "acc") for r in records]
    severities = _severities(records[0])
    per_corruption = [
        f"| {name} | " + " | ".join(_fmt(_mean([t[name][s] for s in severities])) for t in tables) + " |"
        for name in tables[0]
        if name != "clean"
    ]
    means = [severity_means(r) for r in records]
    per_severity = [
        f"| {sev if sev else '0 (clean)'} | " + " | ".join(_fmt(m[i]) for m in means) + " |"
        for i, sev in enumerate([0, *severities])
    ]
    s = records[0]["summary"]
    return "\n".join(
        [
            "# Robustness comparison\n",
            "\n".join(summary) + "\n",
            f"mCA: mean test accuracy over {len(s['corruptions'])} corruptions × {len(s['severities'])} severities, "
            f"on the same {s['num_images']} test images corrupted the same way (seed {s['seed']}) for every model. "
            "Relative drop: (clean − mCA) / clean.\n",
            "## Accuracy (%) per corruption, mean over severities\n",
            head + "\n" + "\n".join(per_corruption) + "\n",
            "## Accuracy (%) per severity, mean over corruptions\n",
            head.replace("| corruption |", "| severity |", 1) + "\n" + "\n".join(per_severity) + "\n",
            _embed(COMPARISON, formats) + "\n",
            f"{records[0]['source']}.\n",
            "## Models\n",
            "".join(f"- {label}: `{r.get('ckpt_path')}`\n" for label, r in zip(labels, records, strict=True)),
        ]
    )


def comparison_figure(records: Sequence[dict[str, Any]]) -> Figure:
    """Small multiples: the mean over corruptions, then each corruption; a line per model in its kind's colour."""
    from sslpath.report import _figure, line_styles

    names = ["mean over corruptions", *(n for n in _table(records[0], "acc") if n != "clean")]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig = _figure((3.0 * cols, 2.4 * rows + 0.6))
    axes = list(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).flat)
    xs = [0, *_severities(records[0])]
    styles = line_styles([_colour_kind(r) for r in records])
    for ax, name in zip(axes, names, strict=False):
        for label, record, style in zip(_labels(records), records, styles, strict=True):
            if name == names[0]:
                ys = severity_means(record)
            else:
                by = _table(record, "acc")[name]
                ys = [record["summary"]["clean_acc"], *(by[x] for x in xs[1:])]
            ax.plot(xs, [100 * y for y in ys], lw=2 if name == names[0] else 1.3, markersize=3, label=label, **style)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.supxlabel("severity (0 = clean)")
    fig.supylabel("test accuracy (%)")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4), fontsize=8)
    return fig


def write_comparison(paths: Sequence[Path], out: Path, formats: Sequence[str] = ("png",), dpi: int = 150) -> Path:
    """robustness_comparison.md/.csv/.png in out for these robustness.json files; returns the .md."""
    from sslpath.core.files import atomic_write_text
    from sslpath.report import check_figure_options, save_figure

    formats = check_figure_options(formats, dpi)
    records = [read_record(p) for p in paths]
    check_comparable(records, paths)
    figure = comparison_figure(records)
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_figure(figure, out / COMPARISON, formats, dpi)
        atomic_write_text(out / f"{COMPARISON}.csv", records_csv(records))
        return atomic_write_text(out / f"{COMPARISON}.md", comparison_markdown(records, formats))
    except OSError as err:
        raise UserError(
            f"cannot write the robustness comparison in {out} ({err.strerror or err}); use a writable --out"
        ) from None


# ----------------------------------------------------------------------------------------------
# A sweep's jobs: benchmark each best checkpoint, then compare


def benchmark_run(run_dir: Path, suite: Suite, device: str = "auto") -> Path | None:
    """Benchmark a finished training run's best checkpoint on its own test split; writes and returns
    <run_dir>/robustness/robustness.json (beside .csv/.md/.png); None for a run without a checkpoint."""
    from omegaconf import OmegaConf

    from sslpath.core.devices import resolve_device
    from sslpath.core.files import read_json
    from sslpath.evaluate import load_split, predict_split
    from sslpath.evaluation.corruptions import benchmark

    metrics = read_json(run_dir / "metrics.json")
    if not metrics.get("ckpt_path"):
        print(f"sslpath: {run_dir} tested no checkpoint (a fast_dev_run): left out of the robustness comparison", file=sys.stderr)
        return None
    cfg = OmegaConf.create({"data": OmegaConf.load(run_dir / "config.yaml").data, "split": "test"})
    torch_device = resolve_device(device)
    meta, split, predict = load_split(cfg, Path(metrics["ckpt_path"]), torch_device)
    batch = cfg.data.eval_batch_size
    logits = predict_split(predict, split.images, batch)
    robustness = benchmark(suite, split.images, split.labels, meta.class_names, predict, logits, batch, torch_device)
    out = run_dir / STEM
    out.mkdir(exist_ok=True)
    write_robustness(out, robustness, str(metrics.get("run_name") or meta.kind), meta.kind, metrics["ckpt_path"])
    return out / f"{STEM}.json"


class SweepRobustness(Callback):
    """After a multirun: each job's best checkpoint under the `robustness` corruptions (a `corruptions`
    config, e.g. `- /corruptions@robustness: pathology`), then one comparison in <sweep>/robustness/."""

    def __init__(self, device: str = "auto", key: str = "robustness") -> None:
        self.device, self.key = device, key

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from sslpath.evaluation.corruptions import load_suite
        from sslpath.training.hydra_callbacks import job_order

        sweep = Path(config.hydra.sweep.dir)
        with exit_on_user_error("sslpath.train"):
            suite = load_suite(config.get(self.key), self.key)
            if suite is None:
                raise UserError(f"{self.key} lists no corruption: set it to a corruptions config (experiment=robustness does).")
            jobs = sorted((p.parent for p in sweep.glob("*/metrics.json")), key=job_order)
            if not jobs:
                print(f"sslpath: no finished job in {sweep}: no robustness comparison", file=sys.stderr)
                return
            records = [r for r in (benchmark_run(job, suite, self.device) for job in jobs) if r is not None]
            if not records:
                return
            out = sweep / STEM
            out.mkdir(exist_ok=True)
            result = write_comparison(records, out)
        print(f"sslpath: robustness comparison -> {result}")


# ----------------------------------------------------------------------------------------------


def comparison_dir(dirs: Sequence[Path], out: Path | None) -> Path:
    """Where the comparison goes: `out`, or for one DIR its robustness/ (a robustness.json: its folder's). Never a
    folder the user did not name: several DIRs need --out, as their common parent may lie far from all of them."""
    from sslpath.results.artifacts import check_writable

    if out is None:
        if len(dirs) > 1:
            raise UserError(
                f"{len(dirs)} DIRs given and no --out: pass --out DIR for the comparison (robustness_comparison.md/.csv/"
                ".png), e.g. --out robustness_comparison. With one DIR it goes to DIR/robustness/."
            )
        single = Path(dirs[0])
        out = (single if single.is_dir() else single.parent) / STEM
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: pass a folder for robustness_comparison.md/.csv/.png.")
    check_writable(out, "--out")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    from sslpath.report import FORMATS

    parser = argparse.ArgumentParser(
        prog="sslpath.robustness_report",
        description="Compare models' robustness: every robustness.json at or below each DIR (written by "
        "`sslpath.evaluate ckpt=… corruptions=pathology` or experiment=robustness) -> robustness_comparison.md/.csv/.png.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    parser.add_argument(
        "--out",
        type=Path,
        help="output dir for robustness_comparison.md/.csv/.png; required with several DIRs, default with one: DIR/robustness/",
    )
    parser.add_argument("--formats", default="png", help=f"comma-separated figure formats of {','.join(FORMATS)}; default png")
    parser.add_argument("--dpi", type=int, default=150, help="figure resolution (default 150; 300 for print)")
    args = parser.parse_args(argv)
    with exit_on_user_error("sslpath.robustness_report"):
        out = comparison_dir(args.dirs, args.out)
        paths = find_records(args.dirs)
        result = write_comparison(paths, out, args.formats, args.dpi)
    print(f"sslpath.robustness_report: {len(paths)} model(s) -> {result}")


if __name__ == "__main__":
    main()
