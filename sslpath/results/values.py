"""Checks of single values read back from a record (untrusted JSON): what each field may hold, and one
message form for a value that fails: `` `where` is VALUE, not WHAT ``."""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_rate(value: Any) -> bool:
    return is_number(value) and 0 <= value <= 1


def is_name(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def or_null(check: Check) -> Check:
    return lambda value: value is None or check(value)


def whole(lo: int, hi: int) -> Check:
    return lambda value: type(value) is int and lo <= value <= hi


class Problems:
    """Collects `` `where` is VALUE, not WHAT `` for each value that fails its check."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def __call__(self, where: str, value: Any, ok: Check, what: str) -> bool:
        if not ok(value):
            self.problems.append(f"`{where}` is {reprlib.repr(value)}, not {what}")
            return False
        return True
