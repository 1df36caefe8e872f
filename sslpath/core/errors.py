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
    except Exception as err:
        user_error = _user_error_in(err)
        if user_error is None:
            raise
        print(f"{prog}: error: {user_error}", file=sys.stderr, flush=True)
        raise SystemExit(user_error.exit_code) from None


def _user_error_in(err: BaseException | None) -> UserError | None:
    """The UserError behind err, also when a library wrapped it (hydra.utils.instantiate does)."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__
    return None


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite. `sslpath.checks.validate.nan_advice` names the settings that
    likely caused it; on its own the message gives the usual remedies."""

    def __init__(self, loss: float, epoch: int, step: int, last: str) -> None:
        self.what = f"the training loss became {loss} at epoch {epoch}, step {step}."
        self.kept = f"The last good checkpoint is kept: {last}."
        super().__init__(
            f"{self.what} Lower the learning rate (optimizer.lr), use trainer.precision=32-true, or check the data "
            f"for broken images. {self.kept}"
        )
