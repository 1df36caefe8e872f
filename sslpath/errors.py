"""User-facing errors: one clear paragraph, a non-zero exit, no traceback wall."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class UserError(Exception):
    """A mistake the user can fix (bad config, bad data, missing file); its text says how."""

    exit_code = 2


@contextlib.contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """Turn a UserError into `prog: error: …` on stderr and exit status 2."""
    try:
        yield
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(err.exit_code) from None
