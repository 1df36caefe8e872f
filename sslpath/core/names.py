"""One rule for names that become text in our records or part of a path.

Names come from users (`run_name`) and from their data (class folder names, a data folder's name,
file names, names stored in a checkpoint or a record). On Linux a file name is any bytes but `/` and
NUL; Python hands undecodable bytes over as lone surrogates (`os.fsdecode`), which no UTF-8 file can
hold, and newlines or tabs shift the rows of a TSV or a log. So:

- `text_name`: the name as printable text: each undecodable byte as `\\xNN`, each control character as
  its escape (`\\n`, `\\t`, `\\x1b`). What records (metrics.json, CSVs, checkpoints, Projector metadata)
  hold; where the name is a file's (a class folder), the original is recorded beside it.
- `path_name`: `text_name` fit to be one path component: no `/` or `\\`, not starting with `.` (so never
  `.` or `..`), at most `max_bytes` UTF-8 bytes (a longer name is cut and ends in a digest of the whole,
  so two long names stay apart). What a name becomes where it is part of a path.
- `check_path_name`: a name the user gave that will be part of a path must already be its `path_name`;
  otherwise a UserError that says why and proposes the safe form.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sslpath.core.errors import UserError

MAX_NAME_BYTES = 120  # the run dir adds a timestamp, a cache file a digest: well inside a file system's 255
# Characters of a class name: one limit, checked alike before training, when a checkpoint's metadata is
# written, and when it is read back (a longer name would train, then have its own checkpoint refused).
MAX_CLASS_NAME = 200
SEPARATORS = re.compile(r"[/\\]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode's surrogateescape hands it over
        return f"\\x{code - 0xDC00:02x}"
    if char in _ESCAPES:
        return _ESCAPES[char]
    if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"  # another lone surrogate, or a Unicode line or paragraph separator


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def text_name(name: str) -> str:
    """`name` as printable UTF-8 text: undecodable bytes and control characters escaped (see module)."""
    return _UNPRINTABLE.sub(lambda m: _escape(m.group()), name)


def class_name_problem(name: Any) -> str | None:
    """Why `name` cannot be a class name in our records (None when it can): non-empty printable text
    (its own text_name) of at most MAX_CLASS_NAME characters."""
    if not isinstance(name, str) or not name:
        return "is not a non-empty text"
    if text_name(name) != name:
        return f"holds control characters or undecodable bytes (as text: {text_name(name)!r})"
    if len(name) > MAX_CLASS_NAME:
        return f"is {len(name)} characters long, more than the limit of {MAX_CLASS_NAME}"
    return None


def check_class_names(names: Sequence[str], where: str) -> None:
    """Refuse before training the class names a checkpoint could not carry (class_name_problem), or repeated ones."""
    for name in names:
        problem = class_name_problem(name)
        if problem:
            shown = text_name(name) if len(name) <= 60 else f"{text_name(name)[:60]}…"
            raise UserError(
                f"the class name {shown!r} of {where} {problem}. Every checkpoint and record keeps the class names, "
                f"as printable text of 1 to {MAX_CLASS_NAME} characters: rename the class (for a tile folder, its "
                "subfolder) before training; nothing was trained."
            )
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise UserError(
            f"{where} has the class name(s) {repeated} more than once (folder names are compared as text, with "
            "undecodable bytes and control characters written as escapes such as \\xe9 and \\n). Rename the "
            "classes so that each is distinct; nothing was trained."
        )


def path_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """`name` as one safe path component (see module); the same name always gives the same component."""
    safe = SEPARATORS.sub("_", text_name(name))
    safe = re.sub(r"^\.", "_", safe) or "_"
    if len(safe.encode()) <= max_bytes:
        return safe
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    cut = safe.encode()[: max_bytes - len(digest) - 1].decode(errors="ignore")
    return f"{cut}-{digest}"


def check_path_name(value: Any, setting: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """`value` unchanged when it is a safe path component; a UserError naming `setting` and why otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{setting}={value!r} is not a name: give it a short non-empty text, e.g. {setting}=my-run.")
    if path_name(value, max_bytes) == value:
        return value
    if SEPARATORS.search(value):
        reason = "contains a path separator (/ or \\)"
    elif value.startswith("."):
        reason = "starts with '.'"
    elif text_name(value) != value:
        reason = "holds control characters or undecodable bytes"
    else:
        reason = f"is {len(value.encode())} bytes long, more than {max_bytes}"
    plain = re.sub(r"[^\w.+=@,-]+", "-", text_name(value)).strip("-.") or "my-run"
    raise UserError(
        f"{setting}={text_name(value)!r} cannot name a folder: it {reason}. {setting} becomes part of a folder's name, "
        f"which must stay inside its parent (paths.log_dir for a run): use a plain name such as "
        f"{setting}={path_name(plain, max_bytes)}. Nothing was written."
    )
