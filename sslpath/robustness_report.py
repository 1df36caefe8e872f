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
import csv
import io
import json
import os
import sys
from collections.abc import Sequence
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


# ----------------------------------------------------------------------------------------------
# One model


def to_record(robustness: Robustness, name: str, kind: str, ckpt_path: str) -> dict[str, Any]:
    """What robustness.json holds: plain values a comparison can be rebuilt from."""
    suite = robustness.suite
    return {
        "run_name": name,
        "model": kind,
        "ckpt_path": ckpt_path,
        "summary": robustness.summary(),
        "rows": robustness.rows(),
        "params": {n: list(v) for n, v in suite.params.items()},
        "reference_size": suite.reference_size,
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
            f"## Corruptions\n\n{record['source']}. Seed {s['seed']}; spatial parameters in px of "
            f"{record['reference_size']} px tiles, scaled to the tile size. Parameter per severity:\n",
            "| corruption | " + " | ".join(map(str, range(1, 1 + len(next(iter(record["params"].values())))))) + " |",
            "| --- |" + " --- |" * len(next(iter(record["params"].values()))),
            params + "\n",
        ]
    )


def records_csv(records: Sequence[dict[str, Any]]) -> str:
    """Long table: one row per model × (clean, corruption × severity)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for record in records:
        for row in record["rows"]:
            param = "" if row["param"] is None else json.dumps(row["param"])
            writer.writerow({"model": record["model"], "run_name": record["run_name"], **row, "param": param})
    return buf.getvalue()


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
    try:
        record = json.loads(Path(path).read_text())
        keys = ("run_name", "model", "summary", "rows", "params")
        ok = isinstance(record, dict) and all(k in record for k in keys) and isinstance(record["rows"], list)
        ok = ok and any(r.get("corruption") == "clean" for r in record["rows"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        ok = False
    if not ok:
        raise UserError(f"{path} is not a robustness.json written by sslpath.evaluate corruptions=…; re-run that evaluation.")
    return record


def check_comparable(records: Sequence[dict[str, Any]], paths: Sequence[Path]) -> None:
    """Models are compared on the same corrupted images: same corruptions, parameters, seed and test split size."""

    def key(r: dict[str, Any]) -> tuple:
        s = r["summary"]
        return (json.dumps(r["params"], sort_keys=True), s["severities"], s["seed"], s["num_images"], r.get("reference_size"))

    first = key(records[0])
    for record, path in zip(records[1:], paths[1:], strict=True):
        if key(record) != first:
            raise UserError(
                f"{path} was benchmarked on other corruptions, parameters, seed or test images than {paths[0]}; "
                "compare only models benchmarked with the same corruptions=… settings and data."
            )


def _labels(records: Sequence[dict[str, Any]]) -> list[str]:
    """Run names, made unique with a counter where several share one."""
    names = [r["run_name"] for r in records]
    return [n if names.count(n) == 1 else f"{n} ({names[: i + 1].count(n)})" for i, n in enumerate(names)]


def comparison_markdown(records: Sequence[dict[str, Any]], formats: Sequence[str]) -> str:
    from sslpath.report import _embed

    labels = _labels(records)
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


def main(argv: Sequence[str] | None = None) -> None:
    from sslpath.report import FORMATS

    parser = argparse.ArgumentParser(
        prog="sslpath.robustness_report",
        description="Compare models' robustness: every robustness.json at or below each DIR (written by "
        "`sslpath.evaluate ckpt=… corruptions=pathology` or experiment=robustness) -> robustness_comparison.md/.csv/.png.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    parser.add_argument("--out", type=Path, help="output dir (default: robustness/ in the models' common parent)")
    parser.add_argument("--formats", default="png", help=f"comma-separated figure formats of {','.join(FORMATS)}; default png")
    parser.add_argument("--dpi", type=int, default=150, help="figure resolution (default 150; 300 for print)")
    args = parser.parse_args(argv)
    with exit_on_user_error("sslpath.robustness_report"):
        paths = find_records(args.dirs)
        out = args.out or Path(os.path.commonpath([str(p.parent) for p in paths])) / STEM
        result = write_comparison(paths, out, args.formats, args.dpi)
    print(f"sslpath.robustness_report: {len(paths)} model(s) -> {result}")


if __name__ == "__main__":
    main()
