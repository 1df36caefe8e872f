"""`python -m sslpath.report RUN_DIR…`: compare finished runs (tables, validation curves, example grids,
confusion matrices, label efficiency).

The command only: argparse and error handling; the work is sslpath.reporting's. Heavy libraries are
imported after the arguments are parsed, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from sslpath.core.errors import exit_on_user_error
from sslpath.reporting.options import FIGURE_FORMATS

PROG = "sslpath.report"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare finished sslpath runs: results.md/.csv, validation curves, example grids, "
        "confusion matrices, label efficiency. A RUN_DIR holding metrics.json is one run; any other RUN_DIR "
        "gives every run dir below it (a sweep's jobs). --out must be new, empty or an earlier report: it is "
        "replaced whole.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, help="output dir (default: report/ under the runs' common parent)")
    formats = ",".join(FIGURE_FORMATS)
    parser.add_argument("--formats", default="png", help=f"comma-separated figure formats of {formats}; default png")
    parser.add_argument("--dpi", type=int, default=150, help="figure resolution (default 150; 300 for print)")
    parser.add_argument(
        "--no-figures",
        dest="figures",
        action="store_false",
        help="tables only (results.md/.csv, comparisons): no figures and no TensorBoard images; seconds for big sweeps",
    )
    parser.add_argument(
        "--no-tensorboard", dest="tensorboard", action="store_false", help="do not write images to each run's tb/report/"
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="A,B",
        help="paired comparison of the runs named A and B (run_name; matched by label fraction and seed); repeatable. "
        "Default: each model against the baseline",
    )
    parser.add_argument("--bootstrap-resamples", type=int, default=1000, help="paired-bootstrap resamples (default 1000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="paired-bootstrap seed (default 0)")
    parser.add_argument("--ci-level", type=float, default=0.95, help="interval level and 1 - significance (default 0.95)")
    args = parser.parse_args(argv)
    with exit_on_user_error(PROG):
        from sslpath.reporting.runs import find_run_dirs
        from sslpath.reporting.write import default_out_dir, write_report
        from sslpath.results.compare import checked_bootstrap

        bootstrap = checked_bootstrap(args.bootstrap_resamples, args.bootstrap_seed, args.ci_level)
        run_dirs = find_run_dirs(args.run_dirs)
        out = args.out or default_out_dir(run_dirs)
        results = write_report(
            run_dirs, out, formats=args.formats, dpi=args.dpi, tensorboard=args.tensorboard, compare=args.compare,
            bootstrap=bootstrap, figures=args.figures,
        )  # fmt: skip
    print(f"{PROG}: {len(run_dirs)} run(s) -> {results}")


if __name__ == "__main__":
    main()
