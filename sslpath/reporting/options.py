"""Figure options every report takes (--formats, --dpi), checked before anything is drawn. Import-light:
the commands' `--help` shows them."""

from __future__ import annotations

from collections.abc import Sequence

from sslpath.core.errors import UserError

FIGURE_FORMATS = ("png", "pdf", "svg")


def check_figure_options(formats: str | Sequence[str], dpi: int) -> tuple[str, ...]:
    """The formats as a tuple ("png,pdf" or ["png", "pdf"]), after checking them and dpi."""
    if isinstance(formats, str):
        formats = formats.split(",")
    chosen = tuple(dict.fromkeys(fmt.strip().lower().lstrip(".") for fmt in formats if fmt.strip()))
    if not chosen or not set(chosen) <= set(FIGURE_FORMATS):
        raise UserError(
            f"figure formats {','.join(formats)!r} are not all known: choose one or more of {', '.join(FIGURE_FORMATS)}, "
            "comma-separated (--formats png,pdf)."
        )
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 10 <= dpi <= 1200:
        raise UserError(f"dpi {dpi!r} is out of range: pass a whole number from 10 to 1200 (150 screen, 300 print).")
    return chosen
