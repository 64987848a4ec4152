"""The ``hvsim batch`` and ``hvsim report`` commands (registered on the main ``hvsim`` app).

``hvsim batch SWEEP`` expands and validates the whole sweep first (bad input: exit 2 naming the
trial and the field, before any work), then runs it; exit 1 if some trials failed (they are rows
with their errors), 130 if interrupted (finished trials are kept: rerun with ``--resume``).
``hvsim report BATCH_DIR`` plots and summarises a batch's results table.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import typer

from cluster.cli import app, err, fail, guarded, interruptible, out
from cluster.config import ConfigError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from cluster.batch import Counts
    from cluster.batch_table import Row
    from cluster.sweep import Sweep, Trial


class LauncherKind(str, Enum):
    ray = "ray"
    serial = "serial"


@app.command()
@guarded
def batch(
    sweep_file: Path = typer.Argument(..., metavar="SWEEP", help="Sweep spec (YAML): a base config and the parameters to vary."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Batch directory (default runs/sweeps/NAME)."),
    address: Optional[str] = typer.Option(None, "--address", help="Run on an existing Ray cluster (auto or HOST:PORT) instead of an embedded local Ray."),
    max_parallel: Optional[int] = typer.Option(None, "--max-parallel", min=1, help="Trials running at once (default: the Ray cluster's CPUs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a batch: keep trials whose results are complete, run the others."),
    list_: bool = typer.Option(False, "--list", help="List the trials (after validating every one) and exit."),
    only: list[str] = typer.Option([], "--only", help="Run only this trial id (or glob; repeatable); others are kept as they are."),
    launcher: LauncherKind = typer.Option(LauncherKind.ray, "--launcher", help="ray (one task per trial) or serial (all in this process, for debugging)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no per-trial messages."),
) -> None:
    """Run a sweep: every trial of a parameter grid, on Ray, into one batch directory."""
    from cluster.batch import BatchInterrupted, default_batch_dir, make_launcher, run_batch, select
    from cluster.sweep import plan_sweep

    if launcher is LauncherKind.serial and address:
        raise ConfigError(str(sweep_file), "--address", "runs trials on a Ray cluster; it needs --launcher ray (the default)")
    sweep, trials = plan_sweep(sweep_file)
    chosen = select(trials, only, str(sweep_file))
    if list_:
        _print_trials(sweep, chosen, len(trials))
        return
    dest = out_dir or default_batch_dir(sweep)
    interruptible()
    bar = _BatchProgress(enabled=not quiet and err.is_terminal, quiet=quiet)
    try:
        res = run_batch(sweep, trials, dest, make_launcher(launcher.value, address, max_parallel), resume=resume, only=only, on_start=bar.start, on_trial=bar.update)
    except BatchInterrupted as exc:
        bar.close()
        c = exc.counts
        fail(130, _escape(f"interrupted: {c.finished} of {c.total} trials finished and kept in {exc.out}; continue with: hvsim batch {sweep_file} --out {exc.out} --resume"))
    finally:
        bar.close()
    c = res.counts
    if not quiet and not bar.enabled:  # on a terminal the bar printed them as they came
        for tid, error in res.failed[:10]:
            err.print(f"[red]failed[/] {tid}: {_escape(error)}", highlight=False)
        if len(res.failed) > 10:
            err.print(f"... and {len(res.failed) - 10} more failed trials (see results.csv)")
    skipped = f", {c.skipped} already complete" if c.skipped else ""
    out.print(f"{c.done} trial(s) run{skipped}, {c.failed} failed, in {res.wall_s:.1f} s")
    out.print(f"batch directory: {res.out}")
    out.print(f"results: {res.out / 'results.csv'}")
    if res.failed:
        fail(1, f"{len(res.failed)} of {c.total} trials failed; their rows in results.csv hold the errors (rerun them with --resume)")


@app.command()
@guarded
def report(
    batch_dir: Path = typer.Argument(..., metavar="BATCH_DIR", help="A batch directory (written by hvsim batch)."),
    x: Optional[str] = typer.Option(None, "--x", help="Swept parameter on the x axis (its path or label; default: the first that varies)."),
    y: Optional[str] = typer.Option(None, "--y", help="Metric on the y axis, a column of results.csv (default: one plot per headline metric that varies)."),
    hue: Optional[str] = typer.Option(None, "--hue", help="Swept parameter drawn as one line per value (default: the next that varies)."),
    plots_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write the PNGs (default BATCH_DIR/plots)."),
) -> None:
    """Plot metrics against parameters (mean, min-max over repetitions) and print a summary table."""
    from cluster.report import make_report

    rep = make_report(batch_dir, x=x, y=y, hue=hue, out=plots_dir)
    out.print(rep.table)
    for p in rep.plots:
        out.print(f"plot: {p}")


def _print_trials(sweep: Sweep, trials: Sequence[Trial], total: int) -> None:
    """One line per trial (ids are what --only takes), after a one-line header."""
    out.print(f"{sweep.name}: {len(trials)} of {total} trial(s), every config valid", highlight=False)
    for tr in trials:
        out.print(f"{tr.index:>5}  {tr.id}  seed={tr.seed}  digest={tr.digest}", highlight=False, soft_wrap=True)


def _escape(s: str) -> str:
    return s.replace("[", "\\[")


class _BatchProgress:
    """Trials done out of total, failures and ETA; only on a terminal."""

    def __init__(self, enabled: bool, quiet: bool):
        self.enabled = enabled
        self.quiet = quiet
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def start(self, counts: Counts) -> None:
        if not self.quiet:
            kept = f" ({counts.skipped} already complete)" if counts.skipped else ""
            err.print(f"batch: {counts.total - counts.skipped} of {counts.total} trial(s) to run{kept}", highlight=False)
        if not self.enabled or self.bar is not None:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("batch", total=counts.total, completed=counts.skipped, failed=0)

    def update(self, row: Row, counts: Counts) -> None:
        if self.bar is None or self.task is None:
            return
        if row.get("status") == "failed":
            self.bar.console.print(f"[red]failed[/] {row['trial']}: {_escape(str(row.get('error')))}", highlight=False)
        self.bar.update(self.task, completed=counts.finished, failed=counts.failed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
