"""`python -m sslpath.robustness_report DIR…`: compare models' robustness benchmarks (every robustness.json at
or below each DIR, written by `sslpath.evaluate ckpt=… corruptions=pathology` or experiment=robustness).

The command only: argparse and error handling; the work is sslpath.reporting.robustness's. Heavy libraries
are imported after the arguments are parsed, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from sslpath.core.errors import exit_on_user_error
from sslpath.reporting.options import FIGURE_FORMATS

PROG = "sslpath.robustness_report"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare models' robustness: every robustness.json at or below each DIR (written by "
        "`sslpath.evaluate ckpt=… corruptions=pathology` or experiment=robustness) -> robustness_comparison.md/.csv/.png.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    parser.add_argument(
        "--out",
        type=Path,
        help="output dir for robustness_comparison.md/.csv/.png; required with several DIRs, default with one: DIR/robustness/",
    )
    formats = ",".join(FIGURE_FORMATS)
    parser.add_argument("--formats", default="png", help=f"comma-separated figure formats of {formats}; default png")
    parser.add_argument("--dpi", type=int, default=150, help="figure resolution (default 150; 300 for print)")
    args = parser.parse_args(argv)
    with exit_on_user_error(PROG):
        from sslpath.reporting.robustness import comparison_dir, find_records, write_comparison

        out = comparison_dir(args.dirs, args.out)
        paths = find_records(args.dirs)
        result = write_comparison(paths, out, args.formats, args.dpi)
    print(f"{PROG}: {len(paths)} model(s) -> {result}")


if __name__ == "__main__":
    main()
