"""One simulation run, end to end, on either backend, leaving nothing behind.

``run_config`` validates the config, builds the plan, starts the backend (inline objects, or
Ray actors on an embedded or existing Ray), lets the domain manager create the domains and
drive the hosts to the end, collects every pCPU's report, and writes the run directory
atomically. Whatever happens (an error, Ctrl-C, SIGTERM), the backend is shut down, Ray is
stopped if we started it (left alone if we joined it), and the half-built run directory is
removed; a directory that already existed is untouched.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from cluster.backends.base import Backend, ManagerClient
from cluster.backends.inline import InlineBackend
from cluster.config import ClusterConfig, Plan, build_plan, config_digest, load_config
from cluster.metrics import build_summary, vcpu_rows
from cluster.errors import Interrupted, RunIncomplete, RunLost
from hosts.messages import PcpuReport
from cluster.results import RunDir, atomic_write, write_run
from cluster.xentrace import TSC_HZ, trace_files

__all__ = ["Interrupted", "RunLost", "RunResult", "run_config", "run_loaded"]


@dataclass
class RunResult:
    out: Path | None
    summary: dict[str, Any]
    wall_s: float
    startup_s: float
    reports: dict[str, list[PcpuReport]] = field(repr=False, default_factory=dict)
    manager_state: dict[str, Any] = field(repr=False, default_factory=dict)


def default_out(config_path: str | Path) -> Path:
    stem = Path(config_path).stem
    return Path("runs") / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"


def _sigterm(signum: int, frame: Any) -> None:  # pragma: no cover - exercised by the kill test in a subprocess
    raise Interrupted()


_handlers_installed = False


def install_signal_handlers() -> None:
    """SIGTERM raises ``Interrupted`` so that cleanup runs (the CLI calls this)."""
    global _handlers_installed
    try:
        signal.signal(signal.SIGTERM, _sigterm)
        _handlers_installed = True
    except ValueError:
        pass  # not the main thread


def run_config(
    config_path: str | Path,
    *,
    backend: str = "ray",
    address: str | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
    write: bool = True,
    progress: Callable[[int, int], None] | None = None,
    xentrace: str | Path | None = None,
) -> RunResult:
    """``xentrace``: write Xen's binary trace there (turns ``run.xentrace`` on; with several
    hosts, one file per host, the host's name before the suffix) instead of into the run
    directory."""
    over = list(overrides or [])
    if xentrace is not None:
        over.append("run.xentrace=true")
    cfg, resolved = load_config(config_path, over, seed)
    return run_loaded(cfg, resolved, config_path=config_path, backend=backend, address=address, out=out, force=force, write=write, progress=progress, xentrace=xentrace)


def run_loaded(
    cfg: ClusterConfig,
    resolved: dict[str, Any],
    *,
    config_path: str | Path = "config",
    backend: str = "ray",
    address: str | None = None,
    out: str | Path | None = None,
    force: bool = False,
    write: bool = True,
    progress: Callable[[int, int], None] | None = None,
    probe: Callable[[Any], dict[str, Any]] | None = None,
    reaper: Any = None,
    xentrace: str | Path | None = None,
) -> RunResult:
    """``reaper``: a running :class:`cluster.reaper.Reaper` to reuse (a batch worker keeps one
    for all its trials); by default each run starts its own and stops it at the end."""
    from cluster.raysession import run_id
    from cluster.reaper import Reaper

    plan = build_plan(cfg)
    rd = RunDir(Path(out) if out else default_out(config_path), force=force) if write else None
    tag = run_id()
    own_reaper = reaper is None
    if own_reaper:
        reaper = Reaper.start(tag)
    if rd is not None:
        reaper.watch_dir(rd.tmp)
    be: Backend | None = None
    try:
        t0 = time.perf_counter()
        be = make_backend(backend, plan, resolved, tag=tag, address=address, reaper=reaper)
        mgr = be.start()
        incomplete: RunIncomplete | None = None
        t1 = startup_end = None
        t_setup = time.perf_counter()
        try:
            mgr.setup()  # building the cluster: domains created, memory populated
            startup_end = t1 = time.perf_counter()
            _drive(mgr, plan, progress)
        except RunIncomplete as exc:
            incomplete = exc
        if t1 is None or startup_end is None:  # lost a host while building the cluster
            startup_end = t1 = time.perf_counter()
        startup_s = startup_end - t0  # Ray's start (when we start it), actors, domains
        wall_sim = time.perf_counter() - t1
        probed = probe(be) if probe is not None else {}
        lost = set(incomplete.hosts) if incomplete else set()
        reports = be.reports(mgr.finish(), lost)
        state = mgr.state()
        placement = be.placement()
        if placement:
            probed = {**probed, "placement": placement}
        procs = be.processes()
        if procs:
            probed = {**probed, "pcpu_processes": procs, "engine_process": be.engine_processes()}
        if incomplete is not None:
            probed = {**probed, "incomplete": True, "sim_time_reached_ns": incomplete.now, "lost_hosts": sorted(incomplete.hosts), "error": str(incomplete)}
        wall = time.perf_counter() - t_setup
        traces: dict[str, bytes] = {}
        if cfg.run.xentrace:
            traces = trace_files(reports, list(plan.hosts), Path(xentrace).name if xentrace is not None else "xentrace.bin")
            where_to = [str(Path(xentrace).with_name(n)) for n in traces] if xentrace is not None else sorted(traces)
            probed = {**probed, "xentrace": {"files": where_to, "tsc_hz": TSC_HZ}}
        frames = {int(uid): n for st in state.get("extra", {}).get("hosts", {}).values() for uid, n in st.get("frames", {}).items()}
        lost_doms = {int(u): t for u, t in state.get("extra", {}).get("lost_domains", {}).items()}
        summary = build_summary(
            plan,
            reports,
            frames=frames,
            lost=lost_doms,
            where={int(k): v for k, v in state["where"].items()},
            destroyed=set(state["destroyed"]),
            backend=backend,
            sim_ns=incomplete.now if incomplete is not None else plan.duration_ns,
            extra={"wall_s": round(wall, 4), "sim_wall_s": round(wall_sim, 4), "startup_s": round(startup_s, 4), "config_digest": config_digest(cfg), **probed, **state.get("extra", {})},
        )
        path = None
        if rd is not None:
            from cluster.migplot import migration_png, round_rows
            from cluster.results import csv_text

            files = dict(state.get("files", {}))
            if xentrace is None:
                files.update(traces)
            migs = summary.get("migrations", [])
            if migs:
                files["migrations.csv"] = csv_text(
                    [{k: v for k, v in m.items() if k != "per_round"} for m in migs]
                )
                files["migration_rounds.csv"] = csv_text(round_rows(migs))
                for m in migs:
                    if m["per_round"]:
                        files[f"migration-{m['id']}.png"] = migration_png(m)
            names = {d.uid: d.name for d in plan.domains}
            write_run(
                rd,
                resolved=resolved,
                summary=summary,
                vcpu_rows=vcpu_rows(summary),
                reports=reports,
                names=names,
                toolstack=list(state["log"]),
                extra_files=files,
            )
            path = rd.commit()
        if xentrace is not None:
            for name, data in traces.items():
                atomic_write(Path(xentrace).with_name(name), data)
        if incomplete is not None:
            raise RunLost(f"{incomplete}; an incomplete run was written to {path}" if path else str(incomplete), path, summary)
        return RunResult(path, summary, wall, startup_s, reports, state)
    finally:
        if rd is not None:
            rd.abort()
            reaper.forget_dir(rd.tmp)
        if be is not None:
            be.shutdown()
        if own_reaper:
            reaper.done()


def make_backend(name: str, plan: Plan, resolved: dict[str, Any], *, tag: str, address: str | None, reaper: Any) -> Backend:
    """The backend called ``name`` (ray, inline), not started yet."""
    if name == "inline":
        return InlineBackend(plan)
    if name == "ray":
        from cluster.backends.ray_backend import RayBackend

        return RayBackend(plan, resolved, tag, address=address, reaper=reaper, on_ray_start=install_signal_handlers if _handlers_installed else None)
    raise ValueError(f"unknown backend {name!r}; use ray or inline")


#: the driver looks in (progress bar, progress file, Ctrl-C) about this often, in wall s
PAUSE_WALL_S = 0.25


def _drive(mgr: ManagerClient, plan: Plan, progress: Callable[[int, int], None] | None) -> None:
    """Run to the end in chunks that take about ``PAUSE_WALL_S`` each: a small first one, then
    sized from the speed measured so far (at most 4x the last), each ending on the epoch grid.
    They are pure pause points, so results do not depend on them; sizing them by wall time
    keeps the Ray backend's cost of a pause (a round of actor calls) small against the work
    between pauses."""
    end = plan.duration_ns
    # on the epoch grid: a pause between grid points is not pure in every config (found with
    # configs/cluster/consolidation-16.yaml), and wall-time sizing must never reach results
    grid = max([spec.epoch_ns for spec in plan.hosts.values()] + [1])
    step = max(end // 200, 1_000_000)
    t = 0
    while t < end:
        nxt = min(end, -(-(t + step) // grid) * grid)
        t0 = time.perf_counter()
        mgr.run_until(nxt)
        wall = time.perf_counter() - t0
        step = max(1_000_000, min(4 * step, int((nxt - t) * PAUSE_WALL_S / max(wall, 1e-6))))
        t = nxt
        if progress is not None:
            progress(t, end)
