"""Writing a report: results.md/.csv and its figures in a report dir that replaces an earlier one whole,
TensorBoard images in each run's tb/report/, and a sweep's sweep_results.md/.csv.

Every input is checked before anything is written, and every dir is filled beside its destination and
renamed into place (sslpath.core.staging): a bad input or a failed write leaves the previous report (or
none), never half of one. Only a dir marked as a report (.sslpath-report) is ever replaced: any other
existing --out, one holding the runs, or the current dir is refused.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from sslpath.core.errors import UserError
from sslpath.core.files import atomic_write_text
from sslpath.core.staging import staged_dirs
from sslpath.models import registry
from sslpath.reporting.cross_centre import STEM_OUT as CROSS_CENTRE
from sslpath.reporting.cross_centre import Row, cross_centre_csv, cross_centre_markdown, cross_centre_rows
from sslpath.reporting.evidence_figures import FROZEN_FIGURE, frozen_features_figure, reliability_of
from sslpath.reporting.figures import (
    VAL_PLOTS,
    confusion_figure,
    curves_figure,
    embed,
    examples_figure,
    label_efficiency_figure,
    log_figures,
    save_figure,
)
from sslpath.reporting.options import check_figure_options
from sslpath.reporting.runs import Run, find_run_dirs, load_run
from sslpath.reporting.tables import (
    COLUMNS,
    LEVEL,
    SWEEP_COLUMNS,
    Group,
    csv_table,
    frozen_sentence,
    group_runs,
    group_stems,
    markdown_table,
    selection_sentence,
    uncertainty_sentence,
)
from sslpath.results.compare import PairedComparisons, paired_comparisons
from sslpath.results.stats import Bootstrap

REPORT_DIR = "report"
SWEEP_RESULTS = "sweep_results"  # .md and .csv in the sweep dir
LABEL_EFFICIENCY = "label_efficiency"  # figure stem, in the report dir
TB_REPORT = "report"  # <run>/tb/report/: the report's images, rewritten whole by every report
TB_EVENTS = "events.out.tfevents."  # all a run's tb/report/ holds
MARKER = ".sslpath-report"  # in every report dir written: only a dir carrying it is ever replaced
NO_FIGURES = (
    "Figures were not drawn (`--no-figures`, `report_figures=false`): run `python -m sslpath.report` on these runs for them."
)


def _entries(path: Path) -> list[Path] | None:
    try:
        return list(path.iterdir())
    except OSError:
        return None


def report_problem(path: Path) -> str | None:
    """Why the existing dir `path` may not be replaced by a report; None for an empty dir or one carrying
    MARKER (a report)."""
    entries = _entries(path)
    if entries is None:
        return f"{path} cannot be listed, so it cannot be checked to be an earlier report"
    if not entries or (path / MARKER).is_file():
        return None
    return (
        f"{path} already exists and is not an sslpath report (it has no {MARKER} file); a report replaces its "
        "dir whole, so it is never written over other files"
    )


def tensorboard_problem(path: Path) -> str | None:
    """Why a run's existing tb/report/ may not be replaced: it holds more than the event files a report writes."""
    entries = _entries(path)
    if entries is not None and all(e.is_file() and not e.is_symlink() and e.name.startswith(TB_EVENTS) for e in entries):
        return None
    return f"{path} holds other files than the TensorBoard images of an earlier report"


def check_out_dir(out: str | Path, run_dirs: Sequence[Path], tensorboard: bool) -> Path:
    """out as an absolute path (`.` and symlinks resolved), after checking that writing the report there,
    which replaces that dir whole, deletes nothing but an earlier report."""
    out = Path(out).expanduser().resolve()
    fix = "Pass a new or empty --out DIR, or an earlier report's dir (the default is report/ beside the runs)."
    if out.parent == out:
        raise UserError(f"--out {out} is the filesystem root, which a report dir cannot replace. {fix}")
    for run in map(Path.resolve, run_dirs):
        if out == run or run.is_relative_to(out):
            what = "is the run dir" if out == run else "holds the run dir"
            raise UserError(
                f"--out {out} {what} {run}: the report replaces its dir whole, so writing it there would delete "
                f"the run's files. {fix}"
            )
        if tensorboard and out.is_relative_to(run / "tb" / TB_REPORT):
            raise UserError(
                f"--out {out} is inside {run / 'tb' / TB_REPORT}, which the report rewrites with TensorBoard images. {fix}"
            )
    with contextlib.suppress(OSError):  # no current dir (deleted): nothing to protect
        if Path.cwd().resolve().is_relative_to(out):
            raise UserError(
                f"--out {out} is or holds the current dir: the report replaces its dir whole, which would leave "
                f"this shell in a deleted folder. {fix}"
            )
    if out.is_dir() and (problem := report_problem(out)):
        raise UserError(f"{problem}. {fix}")
    return out


def results_markdown(
    groups: Sequence[Group],
    stems: Sequence[str],
    efficiency: bool,
    formats: Sequence[str],
    level: float = LEVEL,
    frozen: bool = False,
    figures: bool = True,
) -> str:
    with_fraction = len({group.fraction for group in groups}) > 1
    parts = [
        "# Results\n",
        markdown_table(groups, COLUMNS, level),
        f"{selection_sentence(groups)} A row pools the n runs (seeds) "
        "that share a model name and a label fraction: mean ± sample std. Val kNN accuracy: weighted k-nearest-"
        "neighbour classification of validation images by the SSL backbone's features (— for other models). "
        f"Wall time: training and testing, in minutes. {uncertainty_sentence(level)}{frozen_sentence(groups)}\n",
    ]
    absent = sorted({name for g in groups for run in g.runs for name in run.record.absent_classes})
    if absent:
        parts.append(f"Absent from the test split of some runs: {', '.join(absent)} (empty confusion-matrix rows).\n")
    runs = [f"- {run.title}: `{run.dir}`\n" for group in groups for run in group.runs]
    if not figures:
        return "\n".join([*parts, f"{NO_FIGURES}\n", "## Runs\n", "".join(runs)])
    parts += ["## Validation curves\n", " ".join(embed(stem, formats) for stem in VAL_PLOTS) + "\n"]
    if any(registry.is_ssl(group.kind) for group in groups):
        parts.append("An SSL model's validation accuracy is that of its online linear probe.\n")
    if efficiency:
        parts += ["## Label efficiency\n", embed(LABEL_EFFICIENCY, formats) + "\n"]
    if frozen:
        parts += ["## SSL backbones: online probe and frozen features\n", embed(FROZEN_FIGURE, formats) + "\n"]
    for group, stem in zip(groups, stems):
        kinds = ("qualitative", "confusion", *(("reliability",) if reliability_of(group) is not None else ()))
        shown = (embed(f"{kind}_{stem}", formats) for kind in kinds)
        parts += [f"## {group.label(with_fraction)}\n", " ".join(shown) + "\n"]
    return "\n".join([*parts, "## Runs\n", "".join(runs)])


def _render_report(
    groups: Sequence[Group],
    out: Path,
    formats: Sequence[str],
    dpi: int,
    comparisons: PairedComparisons | None = None,
    level: float = LEVEL,
    cross_centre: Sequence[Row] = (),
    figures: bool = True,
) -> None:
    atomic_write_text(out / MARKER, "Written by sslpath.report, which replaces this dir whole when run again.\n")
    stems = group_stems(groups)
    efficiency = label_efficiency_figure(groups, level) if figures else None
    frozen = frozen_features_figure(groups, level) if figures else None
    if figures:
        for stem, (tag, ylabel, scale) in VAL_PLOTS.items():
            save_figure(curves_figure(groups, tag, ylabel, scale), out / stem, formats, dpi)
        if efficiency is not None:
            save_figure(efficiency, out / LABEL_EFFICIENCY, formats, dpi)
        if frozen is not None:
            save_figure(frozen, out / FROZEN_FIGURE, formats, dpi)
        for group, stem in zip(groups, stems):
            save_figure(examples_figure(group.runs[0]), out / f"qualitative_{stem}", formats, dpi)
            save_figure(confusion_figure(group.runs, group.title), out / f"confusion_{stem}", formats, dpi)
            if (diagram := reliability_of(group)) is not None:
                save_figure(diagram, out / f"reliability_{stem}", formats, dpi)
    atomic_write_text(out / "results.csv", csv_table(groups, COLUMNS, level))
    markdown = results_markdown(groups, stems, efficiency is not None, formats, level, frozen is not None, figures)
    if comparisons is not None and comparisons.rows:  # issue 18: paired comparisons (sslpath.results.compare)
        atomic_write_text(out / "comparisons.csv", comparisons.csv())
        atomic_write_text(out / "comparisons.md", comparisons.markdown())
        markdown += "\n## Paired comparisons\n\n" + "\n".join(f"- {c.a} vs {c.b}: {c.verdict}" for c in comparisons.rows)
        markdown += "\n\nIntervals and McNemar's test: [comparisons.md](comparisons.md).\n"
    if cross_centre:  # issue 19: one checkpoint on its own data and on another centre's (sslpath.reporting.cross_centre)
        table = cross_centre_markdown(cross_centre, level)
        atomic_write_text(out / f"{CROSS_CENTRE}.csv", cross_centre_csv(cross_centre))
        atomic_write_text(out / f"{CROSS_CENTRE}.md", f"# In-domain and out-of-domain accuracy\n\n{table}")
        markdown += f"\n## In-domain and out-of-domain accuracy\n\n{table}"
    atomic_write_text(out / "results.md", markdown)


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: Path,
    *,
    formats: str | Sequence[str] = ("png",),
    dpi: int = 150,
    tensorboard: bool = True,
    tensorboard_within: Path | None = None,
    compare: Sequence[str] = (),
    bootstrap: Bootstrap | None = None,
    figures: bool = True,
) -> Path:
    """Write the report for these runs (dirs are expanded as by find_run_dirs); returns results.md.

    With tensorboard, each run's tb/report/ is rewritten with its example grid and confusion matrix, so
    TensorBoard shows one image per tag however often the report is rebuilt; with tensorboard_within, only
    runs below that dir get them (a sweep leaves runs it merely reads alone). out_dir must be new, empty or
    an earlier report (check_out_dir). Every dir is filled beside its destination and renamed into place
    only once all are complete. comparisons.md/.csv pair the runs `compare` names (`A,B` each) or, by
    default, each model with the baseline tested on the same tiles (sslpath.results.compare). figures=False
    writes the tables only, and no TensorBoard images: a large sweep's report in seconds.
    """
    formats = check_figure_options(formats, dpi)
    found = find_run_dirs(run_dirs)
    out_dir = check_out_dir(out_dir, found, tensorboard)
    groups = group_runs([load_run(d) for d in found])
    bootstrap = bootstrap or Bootstrap()
    comparisons = paired_comparisons([run for group in groups for run in group.runs], compare, bootstrap)
    cross_centre = cross_centre_rows(groups, bootstrap)
    within = None if tensorboard_within is None else Path(tensorboard_within).resolve()
    with staged_dirs() as staged:  # every destination checked and staged before anything is drawn
        fix = "Pass a writable --out DIR."
        tmp = staged.stage(out_dir, fix, report_problem)
        images = []
        if tensorboard and figures:
            for run in (run for group in groups for run in group.runs):
                if within is None or run.dir.resolve().is_relative_to(within):
                    run_fix = f"Make {run.dir} writable, or leave the TensorBoard images out (--no-tensorboard)."
                    images.append((run, staged.stage(run.dir / "tb" / TB_REPORT, run_fix, tensorboard_problem), run_fix))
        try:
            _render_report(groups, tmp, formats, dpi, comparisons, bootstrap.level, cross_centre, figures)
        except OSError as err:
            raise UserError(f"cannot write the report to {out_dir} ({err.strerror or err}). {fix}") from None
        for run, run_tmp, run_fix in images:
            try:
                log_figures(run, run_tmp)
            except OSError as err:
                raise UserError(f"cannot write images in {run_tmp} ({err.strerror or err}). {run_fix}") from None
    return out_dir / "results.md"


def write_sweep_results(
    runs: Sequence[Run],
    sweep_dir: Path,
    report_dir: Path,
    *,
    formats: str | Sequence[str] = ("png",),
    dpi: int = 150,
    figures: bool = True,
) -> Path:
    """sweep_results.md/.csv in sweep_dir (test accuracy, AUC and frozen-feature accuracies per model and
    label fraction: mean ± std over seeds and an interval, sslpath.results.intervals); the label-efficiency
    figure in report_dir when a model was run at several fractions."""
    formats = check_figure_options(formats, dpi)
    groups = group_runs(runs)
    figure = label_efficiency_figure(groups) if figures else None
    parts = [
        "# Sweep results\n",
        markdown_table(groups, SWEEP_COLUMNS),
        f"{selection_sentence(groups)} Mean ± sample std over the n jobs (seeds) that share a model and a "
        f"label fraction (`data.label_fraction`). {uncertainty_sentence(LEVEL)}\n",
    ]
    try:
        if figure is not None:
            save_figure(figure, report_dir / LABEL_EFFICIENCY, formats, dpi)
            link = os.path.relpath(report_dir / LABEL_EFFICIENCY, sweep_dir)
            parts += ["## Label efficiency\n", embed(link, formats) + "\n"]
        atomic_write_text(sweep_dir / f"{SWEEP_RESULTS}.csv", csv_table(groups, SWEEP_COLUMNS))
        return atomic_write_text(sweep_dir / f"{SWEEP_RESULTS}.md", "\n".join(parts))
    except OSError as err:
        raise UserError(f"cannot write in {sweep_dir} ({err.strerror or err}); make it writable.") from None


def default_out_dir(run_dirs: Sequence[Path]) -> Path:
    """report/ in the run dir itself, or in the common parent of several."""
    return Path(os.path.commonpath([str(d) for d in run_dirs])) / REPORT_DIR
