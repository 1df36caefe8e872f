"""In-domain against out-of-domain: one checkpoint tested on its own data and on another centre's (issue 19).

A report given a checkpoint's results on several data sources — its training run (its own test split) or
an evaluation of it, and evaluations of the same checkpoint on other data (`python -m sslpath.evaluate
ckpt=… data=folder data.dir=other_centre/`) — shows them in one table: each source's accuracy, its drop
from the in-domain accuracy and the drop's interval. Two data sources are different tiles, so the drop's
interval for one checkpoint is an unpaired bootstrap (each test set resampled on its own;
sslpath.results.stats.unpaired_accuracy_difference); over n >= 2 seeds it is the t-interval of the
seeds' drops. A robustness benchmark of the in-domain result (robustness.json beside it, or in its
robustness/ folder) adds the stain_shift severities, the synthetic counterpart of another centre; their
per-tile predictions are not kept, so their drop's interval is Newcombe's unpaired interval of two
accuracies (conservative for the same tiles).

The in-domain result of a checkpoint is its training run when the report has it, else the result given
first on the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sslpath.core.files import csv_text
from sslpath.reporting.runs import Run
from sslpath.reporting.tables import Group
from sslpath.results.intervals import METHOD_TEXT, Estimate, difference_interval, estimate, wilson_interval
from sslpath.results.robustness import JSON, STEM, read_robustness_record
from sslpath.results.stats import Bootstrap, unpaired_accuracy_difference

STEM_OUT = "cross_centre"  # <report>/cross_centre.md/.csv
STAIN = "stain_shift"  # the robustness benchmark's stain corruption (conf/corruptions/pathology.yaml)
UNPAIRED, NEWCOMBE = "unpaired-bootstrap", "newcombe"
DROP_TEXT = {
    UNPAIRED: "percentile interval of an unpaired, class-stratified bootstrap of the two test sets",
    NEWCOMBE: "Newcombe's hybrid score interval of two accuracies (unpaired: conservative for the same tiles)",
    "t": METHOD_TEXT["t"],
}


@dataclass(frozen=True)
class Row:
    """One line of the table: a model's accuracy on one data source, and its drop from in-domain."""

    model: str
    fraction: float
    tested_on: str
    accuracy: Estimate
    drop: Estimate | None  # None on the in-domain line


def checkpoint_key(run: Run) -> str | None:
    """The tested checkpoint, as one path however it was written (None: a fast_dev_run tested none)."""
    return None if not run.record.ckpt_path else str(Path(run.record.ckpt_path).resolve())


def _correct(run: Run) -> np.ndarray:
    return (run.labels == run.preds).astype(float)


def _drop(reference: Group, other: Group, bootstrap: Bootstrap) -> Estimate:
    """In-domain minus other accuracy: per checkpoint an unpaired bootstrap interval; over seeds a t-interval."""
    by_ckpt = {checkpoint_key(run): run for run in reference.runs}
    pairs = [(by_ckpt[checkpoint_key(run)], run) for run in other.runs]
    if len(pairs) == 1:
        ref, run = pairs[0]
        drop, ci = unpaired_accuracy_difference(ref.labels, _correct(ref), run.labels, _correct(run), bootstrap)
        return Estimate(drop, None, 1, ci, UNPAIRED)
    return estimate([ref.record.test_acc - run.record.test_acc for ref, run in pairs], bootstrap.level)


def robustness_of(run: Run) -> dict[str, Any] | None:
    """The robustness record of a run's result (an evaluation's own, or a training run's robustness/), checked."""
    for path in (run.dir / JSON, run.dir / STEM / JSON):
        if path.is_file():
            return read_robustness_record(path)
    return None


def _stain_rows(reference: Group, bootstrap: Bootstrap) -> list[Row]:
    """The stain_shift severities of the in-domain runs' robustness benchmarks, as drops from their clean accuracy."""
    records = [r for r in map(robustness_of, reference.runs) if r is not None and STAIN in r["summary"]["corruptions"]]
    if not records:
        return []
    level, rows = bootstrap.level, []
    for severity in records[0]["summary"]["severities"]:
        found = [_row_at(r, severity) for r in records]
        if any(row is None for row in found):
            continue
        accs = [row["acc"] for row in found]
        cleans = [r["summary"]["clean_acc"] for r in records]
        tiles = records[0]["summary"]["num_images"]
        if len(records) == 1:
            accuracy = Estimate(accs[0], None, 1, wilson_interval(accs[0], tiles, level), "wilson")
            drop = Estimate(cleans[0] - accs[0], None, 1, difference_interval(cleans[0], tiles, accs[0], tiles, level), NEWCOMBE)
        else:
            accuracy, drop = estimate(accs, level), estimate([c - a for c, a in zip(cleans, accs)], level)
        shown = f"{STAIN} severity {severity} ({found[0]['param']:g}), {tiles} tiles"
        rows.append(Row(reference.name, reference.fraction, shown, accuracy, drop))
    return rows


def _row_at(record: dict[str, Any], severity: int) -> dict[str, Any] | None:
    return next((r for r in record["rows"] if r["corruption"] == STAIN and r["severity"] == severity), None)


def cross_centre_rows(groups: Sequence[Group], bootstrap: Bootstrap) -> list[Row]:
    """The table's rows: per model tested on more than one source (the same checkpoints), the in-domain line,
    then each other source's, then its stain_shift severities when a benchmark is given. Empty when no
    checkpoint was tested on two sources and none has a stain_shift benchmark."""
    by_checkpoints: dict[frozenset[str], list[Group]] = {}
    for group in groups:
        keys = [checkpoint_key(run) for run in group.runs]
        if all(keys):
            by_checkpoints.setdefault(frozenset(keys), []).append(group)
    rows: list[Row] = []
    for same in by_checkpoints.values():
        reference = next((g for g in same if g.source.own), same[0])
        stains = _stain_rows(reference, bootstrap)
        if len(same) == 1 and not stains:
            continue
        rows.append(Row(reference.name, reference.fraction, reference.source.label, _accuracy(reference, bootstrap), None))
        for other in (g for g in same if g is not reference):
            drop = _drop(reference, other, bootstrap)
            rows.append(Row(other.name, other.fraction, other.source.label, _accuracy(other, bootstrap), drop))
        rows += stains
    return rows


def _accuracy(group: Group, bootstrap: Bootstrap) -> Estimate:
    """Test accuracy as the results table estimates it (a t-interval over seeds, or one run's stored bootstrap
    interval), and for one run that stored none the Wilson interval over its test tiles."""
    first = group.runs[0]
    return estimate(group.values("test_acc"), bootstrap.level, stored_ci=first.record.test_acc_ci, tiles=len(first.labels))


def _cell(found: Estimate | None) -> str:
    if found is None:
        return "—"
    text = f"{found.mean * 100:.1f}"
    if found.std is not None:
        text += f" ± {found.std * 100:.1f}"
    return text + (f" [{found.ci[0] * 100:.1f}, {found.ci[1] * 100:.1f}]" if found.ci else "")


def cross_centre_markdown(rows: Sequence[Row], level: float) -> str:
    """The table and how to read it."""
    pct = f"{level * 100:g} %"
    lines = [
        f"| Model | Label fraction | Tested on | n | Accuracy (%) [{pct}] | Drop from in-domain (pp) [{pct}] |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        cells = [row.model, f"{row.fraction:g}", row.tested_on, str(row.accuracy.n), _cell(row.accuracy), _cell(row.drop)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    methods = sorted({row.drop.method for row in rows if row.drop is not None and row.drop.method})
    stains = any(row.tested_on.startswith(STAIN) for row in rows)
    return "\n".join(lines) + (
        "\n\nEach model's first line is its in-domain result (its training run's own test split, or the result "
        "given first); a drop is in-domain minus that line's accuracy, in percentage points (positive: worse "
        "than in-domain). Accuracy brackets as in the results table (for one run without a stored interval, "
        "Wilson over its tiles). Drop brackets: "
        + "; ".join(f"{method}: {DROP_TEXT[method]}" for method in methods)
        + "."
        + (
            " stain_shift lines: the in-domain tiles under the robustness benchmark's synthetic HED stain shift "
            "(its clean accuracy is the reference there)."
            if stains
            else ""
        )
        + "\n"
    )


def cross_centre_csv(rows: Sequence[Row]) -> str:
    """The table's numbers unformatted (rates, not percentages)."""
    header = ["model", "label_fraction", "tested_on", "n", "acc", "acc_ci_low", "acc_ci_high", "acc_ci_method"]
    header += ["drop", "drop_ci_low", "drop_ci_high", "drop_ci_method"]
    out: list[list[Any]] = [header]
    for row in rows:
        line: list[Any] = [row.model, row.fraction, row.tested_on, row.accuracy.n]
        for found in (row.accuracy, row.drop):
            ci = found.ci if found is not None and found.ci is not None else ("", "")
            line += [found.mean if found else "", *ci, (found.method or "") if found and found.ci else ""]
        out.append(line)
    return csv_text(out)
