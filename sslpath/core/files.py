"""Result files: atomic (a kill mid-write leaves the old file or none, never half of one), and CSVs
whose cells a spreadsheet shows as text, never runs as formulas."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from sslpath.core.names import text_name

# A cell starting with one of these is a formula to a spreadsheet: file, class and run names are not trusted.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@contextlib.contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """A binary file that becomes `path` only if the block finishes; on any error it vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should read like any other file
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_output(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")  # insertion order: class order stays


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_untrusted_json(path: str | Path, max_bytes: int | None = None) -> Any:
    """A JSON file someone handed us, as plain data: no NaN or Infinity, no number too large to be finite
    (`1e999`), at most `max_bytes`. ValueError saying what is wrong otherwise (also for unreadable files)."""

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    try:
        size = Path(path).stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise ValueError(f"{size:,} bytes, more than the {max_bytes:,} such a file can need")
        data = json.loads(Path(path).read_text(), parse_constant=no_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"cannot be read as JSON ({type(err).__name__}: {err})") from None
    if where := non_finite(data):
        raise ValueError(f"has a number too large to be finite at {where}")
    return data


def non_finite(value: Any) -> str | None:
    """Where in a parsed JSON value a float is infinite or NaN, as `key.key[index]`; None if nowhere."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where or "the top level"
        if isinstance(item, dict):
            stack += [(f"{where}.{key}".lstrip("."), v) for key, v in item.items()]
        elif isinstance(item, list):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(item)]
    return None


def spreadsheet_safe(cell: str) -> str:
    """Prefix a quote to a cell a spreadsheet would run as a formula (CSV injection)."""
    return f"'{cell}" if cell.startswith(FORMULA_STARTS) else cell


def csv_cell(value: Any) -> Any:
    """A text cell as printable text (text_name) that no spreadsheet runs; numbers and None as they are."""
    return spreadsheet_safe(text_name(value)) if isinstance(value, str) else value


def csv_text(rows: Iterable[Iterable[Any]]) -> str:
    """The CSV every sslpath table is written as: each row's text cells through csv_cell."""
    buf = io.StringIO()
    csv.writer(buf).writerows([csv_cell(cell) for cell in row] for row in rows)
    return buf.getvalue()
