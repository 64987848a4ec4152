"""Running a sweep: launchers, the batch directory, resume, and the results table.

The records that cross to workers are in :mod:`cluster.batch_wire`, the batch directory and
the table in :mod:`cluster.batch_table`; this module runs trials and ties them together.

What to run is decided in :mod:`cluster.sweep` (expanded and validated before anything starts);
this module only runs it. One trial is one call of :func:`run_trial`: it validates the trial's
resolved config, runs it with the inline backend in the calling process (``run_loaded``), and
returns an outcome record holding the run directory's files. A trial that raises becomes an
outcome with status ``failed`` and its error: failures are data, the sweep goes on.

Launchers share one interface, ``launch(jobs, on_done)``: :class:`SerialLauncher` calls
``run_trial`` in this process one trial after the other; :class:`RayLauncher` makes each trial
one Ray task (an embedded local Ray, or an existing cluster), keeps at most ``max_parallel`` in
flight and hands outcomes back in completion order. Jobs (:class:`TrialJob`) and outcomes
(:class:`TrialOutcome`) cross process boundaries as msgpack mappings tagged with their ``kind``
and read back field by field; an unknown kind or field is refused (``WireError``). Because a
worker returns the files instead of writing them, the batch works on a multi-node cluster
without a shared file system, and the driver is the only writer of the batch directory.

The batch directory::

    BATCH/sweep.yaml        the sweep spec, with base: base.yaml
    BATCH/base.yaml         the base config it was expanded from
    BATCH/runs/TRIAL_ID/    one run directory per trial (config.yaml, summary.json, ..., trial.json)
    BATCH/results.csv       one row per trial (and results.parquet when pyarrow is installed)

The driver commits each outcome as a whole run directory (built hidden, then renamed), so a run
directory with ``summary.json`` is a finished trial; a failed trial's directory holds its
``config.yaml`` and ``trial.json`` (status, error, traceback). So ``runs/*/trial.json`` is the
batch's progress, readable from outside while it runs: one file per committed trial. ``resume``
skips the trials whose ``summary.json`` carries the same ``config_digest`` as the trial's
resolved config and reruns the others (failed, stale, never run). The table is rewritten
atomically at most every few seconds, at the end, and when interrupted; an interrupted batch
loses no committed trial.

Headline metrics per guest domain: ``cpu_pct.D`` (% of one pCPU) and ``wake_p50_us.D`` /
``wake_p99_us.D``, the *largest* of the per-vCPU percentiles (the worst vCPU of the domain: the
percentiles of separate vCPUs cannot be merged without their samples). Migration columns
(``mig_*``) come from the first entry of ``summary["migrations"]`` when a run has one.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Protocol, Sequence


from cluster.config import ConfigError
from cluster.batch_table import BatchDir, Row, table_columns
from cluster.batch_wire import FAILED, OK, Outcome, TrialJob, TrialOutcome, _unpack, pack_message
from cluster.sweep import Sweep, Trial

if TYPE_CHECKING:
    import ray

    from cluster.reaper import Reaper

def default_batch_dir(sweep: Sweep) -> Path:
    return Path("runs") / "sweeps" / sweep.name


# ---------------------------------------------------------------------------------------------


def make_job(trial: Trial) -> TrialJob:
    if trial.resolved is None:
        raise ValueError(f"trial {trial.id} is not validated (cluster.sweep.validate_trials)")
    return TrialJob(trial.id, trial.resolved)


_reaper: Reaper | None = None


def _worker_reaper() -> Reaper:
    """One cleanup process per worker, shared by its trials (starting one per trial costs
    ~70 ms, most of a tiny trial); it removes a trial's scratch directory if the worker dies."""
    global _reaper
    if _reaper is None or _reaper.proc.poll() is not None:
        from cluster.reaper import Reaper

        _reaper = Reaper.start(f"trials{os.getpid()}")
    return _reaper


def run_trial(job: TrialJob) -> TrialOutcome:
    """Run one trial in this process; return its outcome, never raising for a failed trial.

    KeyboardInterrupt (Ctrl-C under the serial launcher) is not a trial failure: it propagates, and
    ``run_loaded`` removes what it had started.
    """
    from cluster.config import resolved_doc, validate_doc
    from cluster.runner import run_loaded

    t0 = time.perf_counter()
    started = time.time()
    tmp = Path(tempfile.gettempdir()) / f"hvsim-trial-{uuid.uuid4().hex[:12]}"
    reaper = _worker_reaper()
    reaper.watch_dir(tmp)
    status: Outcome
    error: str | None
    tb: str | None
    try:
        cfg = validate_doc(job.config, f"trial {job.trial}")
        run_loaded(cfg, resolved_doc(cfg), config_path=job.trial, backend="inline", out=tmp, reaper=reaper)
        files = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(tmp.rglob("*")) if p.is_file()}
        status, error, tb = OK, None, None
    except Exception as exc:  # noqa: BLE001 - a failed trial is data
        status, error, tb = FAILED, _one_line(exc), traceback.format_exc()
        files = {}
    finally:
        _remove_tree(tmp)
        reaper.forget_dir(tmp)
    return TrialOutcome(
        trial=job.trial,
        status=status,
        error=error,
        traceback=tb,
        files=files,
        trial_wall_s=round(time.perf_counter() - t0, 4),
        node=socket.gethostname(),
        pid=os.getpid(),
        started_unix=round(started, 3),
    )


def _remove_tree(path: Path) -> None:
    """rmtree that a Ctrl-C (a KeyboardInterrupt) cannot leave half done; re-raises it after."""
    interrupted: BaseException | None = None
    for _ in range(5):
        try:
            shutil.rmtree(path, ignore_errors=True)
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def failed_outcome(job: TrialJob, error: str, tb: str | None = None) -> TrialOutcome:
    """An outcome for a trial that never returned one (a worker that died, a lost task)."""
    return TrialOutcome(trial=job.trial, status=FAILED, error=error, traceback=tb, files={}, trial_wall_s=None, node=None, pid=None, started_unix=None)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}".rstrip(": ")


def _trial_task(payload: bytes) -> bytes:
    """Body of the Ray task: a packed TrialJob in, a packed TrialOutcome out."""
    return pack_message(run_trial(_unpack(payload, TrialJob)))


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------


OnDone = Callable[[TrialOutcome], None]


class Launcher(Protocol):
    """Runs jobs and calls ``on_done(outcome)`` for each, in this thread, in completion order."""

    name: str

    def launch(self, jobs: Sequence[TrialJob], on_done: OnDone) -> None: ...


class SerialLauncher:
    """Every trial in this process, one after the other (debugging, and the reference for Ray)."""

    name = "serial"
    parallel = 1

    def launch(self, jobs: Sequence[TrialJob], on_done: OnDone) -> None:
        for job in jobs:
            on_done(run_trial(job))


class RayLauncher:
    """One Ray task per trial, at most ``max_parallel`` in flight, gathered in completion order.

    ``address=None`` starts an embedded local Ray (stopped at the end), ``auto`` or ``HOST:PORT``
    joins a cluster (only disconnects); an already initialised Ray is reused and left up.
    Interrupted, it submits nothing more, commits the trials in flight that finish within
    ``grace_s`` and leaves the rest to die with the session (see ``_wind_down``).
    """

    name = "ray"

    def __init__(self, address: str | None = None, max_parallel: int | None = None, num_cpus: int | None = None, grace_s: float = 10.0):
        self.address = address
        self.max_parallel = max_parallel
        self.num_cpus = num_cpus
        self.grace_s = grace_s
        self.parallel: int | None = max_parallel

    def launch(self, jobs: Sequence[TrialJob], on_done: OnDone) -> None:
        from cluster import runner
        from cluster.raysession import RaySession

        session = RaySession(address=self.address, num_cpus=self.num_cpus).start()
        try:
            if runner._handlers_installed:
                runner.install_signal_handlers()  # ray.init installs its own SIGTERM handler; ours must win
            self._launch(jobs, on_done)
        finally:
            session.close()

    def _launch(self, jobs: Sequence[TrialJob], on_done: OnDone) -> None:
        import ray

        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]  # unannotated in Ray
        cpus = int(resources.get("CPU", 1)) or 1
        parallel = self.parallel = max(1, min(self.max_parallel or cpus, len(jobs) or 1))
        task = ray.remote(num_cpus=1, max_retries=0)(_trial_task)
        todo = iter(jobs)
        inflight: dict[ray.ObjectRef[bytes], TrialJob] = {}

        def submit() -> None:
            while len(inflight) < parallel:
                job = next(todo, None)
                if job is None:
                    return
                inflight[task.remote(pack_message(job))] = job

        try:
            submit()
            while inflight:
                # a timeout keeps Ctrl-C responsive while we wait
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    job = inflight.pop(ref)
                    outcome = self._outcome(ref, job)
                    submit()  # keep the workers busy while we commit
                    on_done(outcome)
        except BaseException:
            self._wind_down(inflight, on_done)
            raise

    @staticmethod
    def _outcome(ref: ray.ObjectRef[bytes], job: TrialJob) -> TrialOutcome:
        import ray

        try:
            data = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the worker died, the node was lost, ...
            return failed_outcome(job, _one_line(exc), str(exc))
        return _unpack(data, TrialOutcome)

    def _wind_down(self, inflight: dict[ray.ObjectRef[bytes], TrialJob], on_done: OnDone) -> None:
        """Interrupted: commit the trials in flight that finish within ``grace_s`` (a second
        Ctrl-C stops waiting). The others die with the session: Ray kills a finished job's
        workers, and each worker's reaper removes its trial's scratch directory. No
        ``ray.cancel``: a cancel racing a task's completion can abort the driver inside Ray's
        task manager ("Tried to complete task that was not pending"), seen with Ray 2.x."""
        import ray

        if inflight:
            print(f"interrupted: waiting up to {self.grace_s:g} s for {len(inflight)} trial(s) in flight (Ctrl-C again to stop now)", file=sys.stderr, flush=True)
        deadline = time.monotonic() + self.grace_s
        try:
            while inflight and time.monotonic() < deadline:
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
                for ref in ready:
                    job = inflight.pop(ref)
                    try:
                        data = ray.get(ref)
                    except ray.exceptions.RayError:
                        continue  # its worker died: nothing to keep
                    try:
                        on_done(_unpack(data, TrialOutcome))  # it finished: keep it
                    except KeyboardInterrupt:
                        pass
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting


def make_launcher(kind: str, address: str | None = None, max_parallel: int | None = None) -> Launcher:
    if kind == "serial":
        return SerialLauncher()
    if kind == "ray":
        return RayLauncher(address=address, max_parallel=max_parallel)
    raise ValueError(f"unknown launcher {kind!r}; use ray or serial")


# ---------------------------------------------------------------------------------------------
# rows: a trial's line of the results table


@dataclass
class Counts:
    total: int  # trials selected for this invocation
    skipped: int = 0  # already complete (resume)
    done: int = 0  # committed by this invocation
    failed: int = 0  # of which failed

    @property
    def finished(self) -> int:
        return self.skipped + self.done


@dataclass
class BatchResult:
    out: Path
    rows: list[Row]
    columns: list[str]
    counts: Counts
    failed: list[tuple[str, str]] = field(default_factory=list)  # (trial id, error) of this invocation
    wall_s: float = 0.0


class BatchInterrupted(KeyboardInterrupt):
    """The batch was interrupted; every committed trial is kept and in results.csv."""

    def __init__(self, out: Path, counts: Counts):
        super().__init__(f"interrupted with {counts.finished} of {counts.total} trials finished")
        self.out = out
        self.counts = counts


def select(trials: list[Trial], only: Sequence[str] | None, file: str) -> list[Trial]:
    """Trials whose id matches one of ``only`` (exact or glob); every pattern must match one."""
    if not only:
        return list(trials)
    keep: set[str] = set()
    for pat in only:
        hit = {t.id for t in trials if t.id == pat or fnmatch.fnmatchcase(t.id, pat)}
        if not hit:
            raise ConfigError(file, "--only", f"{pat!r} matches no trial; ids look like {trials[0].id!r} (see --list)")
        keep |= hit
    return [t for t in trials if t.id in keep]


def run_batch(
    sweep: Sweep,
    trials: list[Trial],
    out: Path,
    launcher: Launcher,
    *,
    resume: bool = False,
    only: Sequence[str] | None = None,
    on_start: Optional[Callable[[Counts], None]] = None,
    on_trial: Optional[Callable[[Row, Counts], None]] = None,
    flush_every_s: float = 2.0,
) -> BatchResult:
    """Run the (validated) trials of a sweep into ``out``; see the module docstring.

    ``on_start(counts)`` is called once the directory is ready, before the first trial starts;
    ``on_trial(row, counts)`` after each trial is committed (progress display; a test may raise
    KeyboardInterrupt from it to interrupt the batch at a known point).
    """
    if any(t.digest is None for t in trials):
        raise ValueError("run_batch needs validated trials (cluster.sweep.validate_trials)")
    t_start = time.perf_counter()
    chosen = select(trials, only, sweep.file)
    bd = BatchDir(out)
    bd.open(keep_existing=resume or bool(only))
    try:
        bd.write_spec(sweep)
        params = sweep.spec.param_paths()
        rows: dict[str, Row] = {}
        todo: list[Trial] = []
        counts = Counts(total=len(chosen))
        chosen_ids = {t.id for t in chosen}
        for t in trials:
            status, row = bd.state(t)
            rows[t.id] = row
            if t.id in chosen_ids:
                if resume and status == OK:
                    counts.skipped += 1
                else:
                    todo.append(t)
        by_id = {t.id: t for t in todo}
        failed: list[tuple[str, str]] = []
        last_flush = [0.0]

        def flush(force: bool = False) -> None:
            if force or time.monotonic() - last_flush[0] >= flush_every_s:
                ordered = [rows[t.id] for t in trials]
                bd.write_results(ordered, table_columns(ordered, params))
                last_flush[0] = time.monotonic()

        def on_done(outcome: TrialOutcome) -> None:
            trial = by_id[outcome.trial]
            row = bd.commit(trial, outcome, launcher.name)
            rows[trial.id] = row
            counts.done += 1
            if row["status"] != OK:
                counts.failed += 1
                failed.append((trial.id, str(row.get("error") or "failed")))
            flush()
            if on_trial is not None:
                on_trial(row, counts)

        flush(force=True)
        if on_start is not None:
            on_start(counts)
        try:
            if todo:
                launcher.launch([make_job(t) for t in todo], on_done)
        except KeyboardInterrupt as exc:
            flush(force=True)
            raise BatchInterrupted(bd.root, counts) from exc
        flush(force=True)
        ordered = [rows[t.id] for t in trials]
        return BatchResult(bd.root, ordered, table_columns(ordered, params), counts, failed, round(time.perf_counter() - t_start, 4))
    finally:
        bd.close()
