"""The cells of the robustness tables: each estimate with its interval from robustness.json (accuracy, AUC and
relative drop; `49.7 [44.7, 54.3]`), and what a record written before some intervals were stored shows instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sslpath.results.intervals import wilson_interval
from sslpath.results.stats import Interval

DEFAULT_LEVEL = 0.95  # of a record written before it stored its bootstrap settings
ACC, AUC = "acc", "auc"  # the metrics of a row with a grid per corruption × severity
SHOWN = {ACC: (100, 1), AUC: (1, 3)}  # scale and digits: accuracy in %, AUC as a fraction


def fmt(value: float | None, scale: float = 100, digits: int = 1) -> str:
    return "—" if value is None else f"{value * scale:.{digits}f}"


def cell(value: float | None, ci: Interval | None, scale: float = 100, digits: int = 1) -> str:
    """An estimate with its interval: `49.7 [44.7, 54.3]` (in % by default; no interval stored: the value alone)."""
    if value is None or ci is None:
        return fmt(value, scale, digits)
    return f"{fmt(value, scale, digits)} [{fmt(ci[0], scale, digits)}, {fmt(ci[1], scale, digits)}]"


def metric_cell(metric: str, value: float | None, ci: Interval | None) -> str:
    return cell(value, ci, *SHOWN[metric])


def prose(value: float | None, ci: Interval | None, unit: str = "%", scale: float = 100, digits: int = 1) -> str:
    """An estimate in running text: `49.7% [44.7, 54.3]`."""
    shown = fmt(value, scale, digits) + ("" if value is None else unit)
    return shown + ("" if value is None or ci is None else f" [{fmt(ci[0], scale, digits)}, {fmt(ci[1], scale, digits)}]")


def level(record: dict[str, Any]) -> float:
    return float(record["summary"].get("bootstrap", {}).get("level", DEFAULT_LEVEL))


def _tup(ci: Sequence[float] | None) -> Interval | None:
    return None if ci is None else (float(ci[0]), float(ci[1]))


def row_ci(record: dict[str, Any], row: dict[str, Any], metric: str = ACC) -> Interval | None:
    """A row's interval of `acc`, `auc` or `relative_drop`: the stored bootstrap one; in a record written before
    intervals were stored, an accuracy gets the Wilson interval of that proportion of the test tiles, the others none."""
    stored = row.get(f"{metric}_ci")
    if stored is not None or metric != ACC:
        return _tup(stored)
    return wilson_interval(row["acc"], record["summary"]["num_images"], level(record))


def grid_cis(record: dict[str, Any], metric: str) -> dict[str, dict[int, Interval | None]]:
    """corruption -> severity -> the row's interval (severity 0: clean)."""
    table: dict[str, dict[int, Interval | None]] = {}
    for row in record["rows"]:
        table.setdefault(row["corruption"], {})[row["severity"]] = row_ci(record, row, metric)
    return table


def mean_cis(
    record: dict[str, Any], metric: str = ACC
) -> tuple[Interval | None, dict[str, Interval | None], list[Interval | None]]:
    """The stored intervals of the mean over all corruptions × severities, of each corruption's mean over severities
    and of each severity's mean over corruptions (None each in a record written before they were stored)."""
    s = record["summary"]
    by_corruption = s.get(f"corruption_{metric}_ci") or {}
    by_severity = s.get(f"severity_{metric}_ci") or [None] * len(s["severities"])
    return (
        _tup(s.get(f"mean_corruption_{metric}_ci")),
        {n: _tup(by_corruption.get(n)) for n in s["corruptions"]},
        [_tup(ci) for ci in by_severity],
    )


def severity_mean_cis(record: dict[str, Any]) -> list[Interval | None]:
    """Intervals of the clean accuracy and of each severity's mean accuracy over corruptions, as severity_means."""
    return [row_ci(record, record["rows"][0]), *mean_cis(record)[2]]


def error_bars(values: Sequence[float | None], cis: Sequence[Interval | None], scale: float = 100) -> list[list[float]] | None:
    """matplotlib's asymmetric yerr (below, above) for these values, or None where one has no interval."""
    pairs = list(zip(values, cis, strict=True))
    if any(v is None or ci is None for v, ci in pairs):
        return None
    # at least 0: a stored accuracy is float32, its interval float64, and a percentile interval may end at the value
    return [[scale * max(0.0, v - ci[0]) for v, ci in pairs], [scale * max(0.0, ci[1] - v) for v, ci in pairs]]


def drop_ci(record: dict[str, Any]) -> Interval | None:
    """The stored interval of the summary's relative drop (1 − mCA / clean accuracy)."""
    return _tup(record["summary"].get("relative_drop_ci"))


def interval_note(records: Sequence[dict[str, Any]]) -> str:
    """What the brackets are, said once under the tables, and which intervals older records lack."""
    num = records[0]["summary"]["num_images"]
    text = (
        f"Brackets: {round(100 * level(records[0]))} % percentile-bootstrap interval over the {num} test tiles "
        "(stratified by class, one run each, 1 seed), every estimate from the same resamples: a mean accuracy over "
        "corruptions or severities is resampled by tile, so a tile's difficulty is shared; a mean AUC is the mean of "
        "the conditions' macro AUCs on each resample; a relative drop is 1 − accuracy / clean accuracy on each "
        "resample (paired: the same tiles clean and corrupted)."
    )
    if not all("mean_corruption_acc_ci" in r["summary"] for r in records):
        text += (
            " A record written before intervals were stored shows Wilson intervals for single accuracies and none for "
            "means: re-run its benchmark for bootstrap intervals."
        )
    if not all("mean_corruption_auc_ci" in r["summary"] and "relative_drop_ci" in r["summary"] for r in records):
        text += (
            " A record written before AUC and relative-drop intervals were stored shows those without an interval "
            "(missing, not zero): re-run its benchmark for them."
        )
    return text
