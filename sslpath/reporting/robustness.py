"""Robustness tables and figures: one model under each corruption × severity, and models compared.

`sslpath.evaluate ckpt=… corruptions=pathology` writes one model's robustness.json/.csv/.md/.png;
`sslpath.robustness_report` compares every robustness.json at or below each DIR (evaluation folders, or a
sweep of `experiment=robustness`, whose jobs keep theirs in <job>/robustness/) in
robustness_comparison.md/.csv/.png. Figures use the reports' canvas, saving and model-kind colours.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from sslpath.core.errors import UserError
from sslpath.core.files import atomic_write_bytes, atomic_write_json, atomic_write_text, csv_text
from sslpath.core.names import text_name
from sslpath.core.paths import check_writable, find_results
from sslpath.reporting.figures import embed, new_figure, save_figure
from sslpath.reporting.options import check_figure_options
from sslpath.reporting.robustness_cells import (
    ACC,
    AUC,
    cell,
    drop_ci,
    error_bars,
    grid_cis,
    interval_note,
    mean_cis,
    metric_cell,
    prose,
    row_ci,
    severity_mean_cis,
)
from sslpath.reporting.style import kind_colour, line_styles
from sslpath.results.robustness import JSON, ROW_KEYS, STEM, Benchmarked, read_robustness_record, robustness_record

COMPARISON = "robustness_comparison"  # several: <out>/robustness_comparison.{csv,md,png}
CI_FIELDS = ("acc", "auc", "relative_drop")  # each gets <key>_ci_lo, <key>_ci_hi in the CSV
CSV_FIELDS = ("model", "run_name", *ROW_KEYS, *(f"{key}_ci_{end}" for key in CI_FIELDS for end in ("lo", "hi")))


# ----------------------------------------------------------------------------------------------
# One model


def write_robustness(
    out: Path, robustness: Benchmarked, name: str, kind: str, ckpt_path: str, formats: Sequence[str] = ("png",), dpi: int = 150
) -> dict[str, Any]:
    """robustness.json/.csv/.md and the figure in out; returns the record."""
    record = robustness_record(robustness, name, kind, ckpt_path)
    save_figure(robustness_figure(record), out / STEM, formats, dpi)
    atomic_write_text(out / f"{STEM}.csv", records_csv([record]))
    atomic_write_text(out / f"{STEM}.md", record_markdown(record, formats))
    atomic_write_json(out / JSON, record)  # last: its presence marks a complete set
    return record


def copy_robustness(src: Path, dest: Path) -> None:
    """The tables and figures (not the .json, so a search for robustness.json finds each model once) into dest."""
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


def severity_means(record: dict[str, Any], key: str = "acc") -> list[float | None]:
    """Mean over corruptions at each severity, after the clean value at severity 0."""
    table = _table(record, key)
    corrupted = [t for name, t in table.items() if name != "clean"]
    return [table["clean"][0], *(_mean([t[s] for t in corrupted]) for s in _severities(record))]


def _grid(record: dict[str, Any], metric: str) -> str:
    """Corruption × severity of `acc` or `auc`, each cell and mean with its interval."""
    severities = _severities(record)
    table = _table(record, metric)
    cis, (all_ci, corruption_cis, severity_cis) = grid_cis(record, metric), mean_cis(record, metric)
    lines = [
        "| corruption | " + " | ".join(map(str, severities)) + " | mean |",
        "| --- |" + " ---: |" * (len(severities) + 1),
    ]
    for name, by in table.items():
        if name != "clean":
            cells = [metric_cell(metric, by[s], cis[name][s]) for s in severities]
            mean = metric_cell(metric, _mean([by[s] for s in severities]), corruption_cis[name])
            lines.append(f"| {name} | " + " | ".join([*cells, mean]) + " |")
    means = severity_means(record, metric)[1:]
    cells = [metric_cell(metric, v, ci) for v, ci in zip(means, severity_cis, strict=True)]
    lines.append("| **mean** | " + " | ".join([*cells, metric_cell(metric, _mean(means), all_ci)]) + " |")
    return "\n".join(lines) + "\n"


def record_markdown(record: dict[str, Any], formats: Sequence[str] = ("png",)) -> str:
    s = record["summary"]
    severities = _severities(record)
    params = "\n".join(f"| {n} | " + " | ".join(json.dumps(p) for p in v) + " |" for n, v in record["params"].items())
    return "\n".join(
        [
            f"# Robustness: {record['run_name']}\n",
            f"{record['model']} model `{record['ckpt_path']}` on {s['num_images']} test images. Clean accuracy "
            f"{prose(s['clean_acc'], row_ci(record, record['rows'][0]))} (AUC "
            f"{prose(s['clean_auc'], row_ci(record, record['rows'][0], AUC), '', 1, 3)}); mean corruption accuracy (mCA, "
            f"over {len(s['corruptions'])} corruptions × {len(severities)} severities) "
            f"{prose(s['mean_corruption_acc'], mean_cis(record)[0])} (AUC "
            f"{prose(s['mean_corruption_auc'], mean_cis(record, AUC)[0], '', 1, 3)}); relative drop from clean "
            f"{prose(s['relative_drop'], drop_ci(record))}.\n",
            "## Accuracy (%) per corruption and severity\n",
            _grid(record, ACC),
            interval_note([record]) + "\n",
            "## AUC per corruption and severity\n",
            _grid(record, AUC),
            embed(STEM, formats) + "\n",
            f"## Corruptions\n\n{record['source']}. Seed {s['seed']}; spatial parameters in px of the tile itself, as "
            "MedMNIST-C applies them (docs/robustness/corruption_strength.md). Parameter per severity:\n",
            "| corruption | " + " | ".join(map(str, range(1, 1 + len(next(iter(record["params"].values())))))) + " |",
            "| --- |" + " --- |" * len(next(iter(record["params"].values()))),
            params + "\n",
        ]
    )


def records_csv(records: Sequence[dict[str, Any]]) -> str:
    """Long table: one row per model × (clean, corruption × severity); text cells escaped (sslpath.core.files.csv_text)."""
    table: list[list[Any]] = [list(CSV_FIELDS)]
    for record in records:
        for row in record["rows"]:
            cells = {**row, "model": record["model"], "run_name": record["run_name"]}
            cells["param"] = "" if row["param"] is None else json.dumps(row["param"])
            for key in CI_FIELDS:
                ci = row_ci(record, row, key)
                cells[f"{key}_ci_lo"], cells[f"{key}_ci_hi"] = ("", "") if ci is None else ci
            table.append([cells[field] for field in CSV_FIELDS])
    return csv_text(table)


def robustness_figure(record: dict[str, Any]) -> Figure:
    """Accuracy against severity: a thin line per corruption, their mean in the model's colour."""
    s = record["summary"]
    xs = [0, *_severities(record)]
    clean = 100 * s["clean_acc"]
    fig = new_figure((7.6, 4.4))
    ax = fig.add_subplot()
    palette = colormaps["tab20"].colors
    for i, (name, by) in enumerate((n, by) for n, by in _table(record, "acc").items() if n != "clean"):
        ax.plot(xs, [clean, *(100 * by[x] for x in xs[1:])], color=palette[i % len(palette)], lw=1, marker=".", label=name)
    means = severity_means(record)
    ax.errorbar(
        xs,
        [100 * v for v in means],
        yerr=error_bars(means, severity_mean_cis(record)),
        color=kind_colour(record["model"]),
        lw=2.8,
        marker="o",
        capsize=3,
        label="mean over corruptions",
    )
    ax.axhline(clean, color="0.45", lw=1, ls=":", label=f"clean ({prose(s['clean_acc'], row_ci(record, record['rows'][0]))})")
    ax.set_xticks(xs)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"{record['run_name']} · mCA {prose(s['mean_corruption_acc'], mean_cis(record)[0])} · "
        f"relative drop {prose(s['relative_drop'], drop_ci(record))}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


# ----------------------------------------------------------------------------------------------
# Several models


def find_records(paths: Sequence[str | Path]) -> list[Path]:
    """The robustness.json files the paths give (sslpath.core.paths.find_results, as a report finds runs)."""

    def nothing(_: Path) -> str:
        return (
            "there is no robustness result to compare. Benchmark a checkpoint first: python -m sslpath.evaluate "
            "ckpt=… corruptions=pathology out=DIR (or train with experiment=robustness)."
        )

    return find_results(paths, JSON, nothing)


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
    names = [text_name(r["run_name"]) for r in records]
    return [n if names.count(n) == 1 else f"{n} ({names[: i + 1].count(n)})" for i, n in enumerate(names)]


def comparison_markdown(records: Sequence[dict[str, Any]], formats: Sequence[str]) -> str:
    labels = [label.replace("|", "\\|") for label in _labels(records)]  # a | would end the table cell
    head = "| corruption | " + " | ".join(labels) + " |\n| --- |" + " ---: |" * len(labels)
    summary = [
        "| model | clean acc (%) [interval] | mCA (%) [interval] | relative drop (%) [interval] | clean AUC [interval] "
        "| mean corruption AUC [interval] |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in zip(labels, records, strict=True):
        s = r["summary"]
        summary.append(
            f"| {label} | {cell(s['clean_acc'], row_ci(r, r['rows'][0]))} | "
            f"{cell(s['mean_corruption_acc'], mean_cis(r)[0])} | {cell(s['relative_drop'], drop_ci(r))} | "
            f"{metric_cell(AUC, s['clean_auc'], row_ci(r, r['rows'][0], AUC))} | "
            f"{metric_cell(AUC, s['mean_corruption_auc'], mean_cis(r, AUC)[0])} |"
        )
    tables = [_table(r, "acc") for r in records]
    means_cis = [mean_cis(r) for r in records]
    severities = _severities(records[0])
    per_corruption = [
        f"| {name} | "
        + " | ".join(cell(_mean([t[name][s] for s in severities]), m[1][name]) for t, m in zip(tables, means_cis, strict=True))
        + " |"
        for name in tables[0]
        if name != "clean"
    ]
    means = [severity_means(r) for r in records]
    clean_cis = [row_ci(r, r["rows"][0]) for r in records]
    per_severity = [
        f"| {sev if sev else '0 (clean)'} | "
        + " | ".join(
            cell(m[i], clean if i == 0 else c[2][i - 1]) for m, c, clean in zip(means, means_cis, clean_cis, strict=True)
        )
        + " |"
        for i, sev in enumerate([0, *severities])
    ]
    s = records[0]["summary"]
    return "\n".join(
        [
            "# Robustness comparison\n",
            "\n".join(summary) + "\n",
            f"mCA: mean test accuracy over {len(s['corruptions'])} corruptions × {len(s['severities'])} severities, "
            f"on the same {s['num_images']} test images corrupted the same way (seed {s['seed']}) for every model. "
            "Relative drop: (clean − mCA) / clean. " + interval_note(records) + "\n",
            "## Accuracy (%) per corruption, mean over severities\n",
            head + "\n" + "\n".join(per_corruption) + "\n",
            "## Accuracy (%) per severity, mean over corruptions\n",
            head.replace("| corruption |", "| severity |", 1) + "\n" + "\n".join(per_severity) + "\n",
            embed(COMPARISON, formats) + "\n",
            f"{records[0]['source']}.\n",
            "## Models\n",
            "".join(f"- {label}: `{r.get('ckpt_path')}`\n" for label, r in zip(labels, records, strict=True)),
        ]
    )


def comparison_figure(records: Sequence[dict[str, Any]]) -> Figure:
    """Small multiples: the mean over corruptions, then each corruption; a line per model in its kind's colour."""
    names = ["mean over corruptions", *(n for n in _table(records[0], "acc") if n != "clean")]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig = new_figure((3.0 * cols, 2.4 * rows + 0.6))
    axes = list(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).flat)
    xs = [0, *_severities(records[0])]
    styles = line_styles([r["model"] for r in records])
    for ax, name in zip(axes, names, strict=False):
        for label, record, style in zip(_labels(records), records, styles, strict=True):
            if name == names[0]:  # the mean over corruptions, with its intervals
                ys = severity_means(record)
                bars = error_bars(ys, severity_mean_cis(record))
                ax.errorbar(xs, [100 * y for y in ys], yerr=bars, lw=2, markersize=3, capsize=2, label=label, **style)
                continue
            by = _table(record, "acc")[name]
            ys = [record["summary"]["clean_acc"], *(by[x] for x in xs[1:])]
            ax.plot(xs, [100 * y for y in ys], lw=1.3, markersize=3, label=label, **style)
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
    formats = check_figure_options(formats, dpi)
    records = [read_robustness_record(p) for p in paths]
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


def comparison_dir(dirs: Sequence[Path], out: Path | None) -> Path:
    """Where the comparison goes: `out`, or for one DIR its robustness/ (a robustness.json: its folder's). Never a
    folder the user did not name: several DIRs need --out, as their common parent may lie far from all of them."""
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
