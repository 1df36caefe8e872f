"""Where a run record's test tiles came from: a training run's own test split, or the data an evaluation
of a checkpoint named (`python -m sslpath.evaluate ckpt=… data=…`, recorded as `data` and
`evaluated_split` in metrics.json). Reports keep results of one checkpoint on different data apart and
compare them (sslpath.reporting.cross_centre).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from sslpath.core.names import text_name

OWN = "own test split"  # a training run's test stage: the data it was trained on
TTA = "d4 TTA"  # evaluations with tta=true: their prediction is another model of the same tiles
DATA_KEYS = ("dir", "path", "flag")  # what names a data set in conf/data (folder, npz file, MedMNIST flag)
MAX_LABEL = 80  # characters of a source shown in a table cell


@dataclass(frozen=True)
class DataSource:
    """`key` tells sources apart (full paths); `label` is what a table shows; `own`: a training run's test stage."""

    key: str
    label: str
    own: bool


OWN_SOURCE = DataSource(OWN, OWN, own=True)


def _data_name(data: dict[str, Any]) -> str:
    """The folder, file or MedMNIST flag that names the evaluated data (a record is untrusted: any value is text)."""
    for key in DATA_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value
    # a source without a file (data=synthetic): the data module's kind, from its class name
    target = data.get("_target_")
    kind = target.rsplit(".", 1)[-1].removesuffix("DataModule").lower() if isinstance(target, str) else ""
    return kind or "data"


def data_source(record: Any) -> DataSource:
    """The record's test tiles: its own test split for a training run, else the evaluation's data and split
    (with TTA marked, so plain and TTA evaluations of one checkpoint on one data set stay apart)."""
    tta = f" · {TTA}" if getattr(record, "tta", None) else ""
    data, split = getattr(record, "data", None), getattr(record, "evaluated_split", None)
    if not isinstance(data, dict) or split is None:
        return DataSource(f"{OWN}{tta}", f"{OWN}{tta}", own=not tta)
    name = _data_name(data)
    shown = PurePath(name.rstrip("/\\")).name or name
    label = text_name(f"{shown}, {split} split")[:MAX_LABEL] + tta
    return DataSource(f"{name}|{split}{tta}", label, own=False)
