"""The ``hvsim`` command line.

Exit codes: 0 success; 1 a run that failed for another reason (the message says why); 2 bad
input (config, flag, path, record: one message naming the file, the field and what is
allowed); 130 interrupted. Set ``HVSIM_DEBUG=1`` to get tracebacks of internal errors.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cluster.config import ConfigError, json_schema, load_config
from cluster.results import OutputError, atomic_write

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="hvsim: simulate clusters of Xen-style hosts on Ray (every pCPU a Ray actor).",
)
err = Console(stderr=True)
out = Console()


class Backend(str, Enum):
    ray = "ray"
    inline = "inline"


def fail(code: int, msg: str) -> NoReturn:
    err.print(f"[bold red]hvsim:[/] {msg}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn known failures into one message and the right exit code."""

    @functools.wraps(fn)
    def wrapper(*a: P.args, **kw: P.kwargs) -> R:
        from cluster.errors import PlacementError
        from cluster.runner import Interrupted, RunLost

        try:
            return fn(*a, **kw)
        except typer.Exit:
            raise
        except ConfigError as exc:
            fail(2, _escape(str(exc)))
        except PlacementError as exc:
            fail(2, _escape(f"placement: {exc}"))
        except OutputError as exc:
            fail(2, _escape(str(exc)))
        except (KeyboardInterrupt, Interrupted):
            fail(130, "interrupted; the run directory was not written and Ray was shut down")
        except RunLost as exc:
            fail(3, _escape(f"Ray node lost: {exc}"))
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            if os.environ.get("HVSIM_DEBUG"):
                raise
            fail(1, _escape(f"{exc.__class__.__name__}: {exc}") + " (set HVSIM_DEBUG=1 for a traceback)")

    return wrapper


def _escape(s: str) -> str:
    return s.replace("[", "\\[")


def interruptible() -> None:
    """SIGINT and SIGTERM interrupt the command and its cleanup runs, whatever was inherited: a
    background job of a non-interactive shell starts with SIGINT ignored, and Python then never
    raises KeyboardInterrupt (SIGTERM gets its handler in ``install_signal_handlers``)."""
    from cluster.runner import install_signal_handlers

    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:
        pass  # not the main thread
    install_signal_handlers()


@app.command()
@guarded
def validate(
    config: Path = typer.Argument(..., help="Config file (YAML)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: PATH=VALUE (repeatable)."),
) -> None:
    """Check a config file; print a one-line summary of what it describes."""
    cfg, _ = load_config(config, set_)
    nd = len(cfg.domains)
    np_ = sum(h.pcpus for h in cfg.hosts)
    out.print(f"{config}: ok: {len(cfg.hosts)} host(s), {np_} pCPU(s), {nd} domain(s), {len(cfg.events)} event(s), {cfg.run.duration_ms:g} ms")


@app.command()
@guarded
def schema(output: Optional[Path] = typer.Option(None, "--out", help="Write the JSON Schema here instead of stdout.")) -> None:
    """Print the JSON Schema of config files (point your editor's YAML plugin at it)."""
    text = json.dumps(json_schema(), indent=2) + "\n"
    if output:
        atomic_write(output, text)
    else:
        sys.stdout.write(text)


@app.command()
@guarded
def run(
    config: Path = typer.Argument(..., help="Config file (YAML)."),
    backend: Backend = typer.Option(Backend.ray, "--backend", help="ray (one actor per pCPU) or inline (all in this process)."),
    address: Optional[str] = typer.Option(None, "--address", help="Join an existing Ray cluster (auto or HOST:PORT) instead of starting one."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory to write (default runs/NAME-TIMESTAMP)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Root seed (overrides run.seed)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: PATH=VALUE (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists (only once the new run is complete)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table and no progress bar."),
    progress_file: Optional[Path] = typer.Option(None, "--progress-file", help="Keep the simulated time reached in this JSON file (sim_ns, end_ns), replaced atomically as the run advances."),
    xentrace: Optional[Path] = typer.Option(None, "--xentrace", help="Write Xen's binary trace (what xentrace records; TSC at 4 GHz, read it with xenalyze --cpu-hz=4G) to FILE; several hosts: FILE with each host's name before the suffix."),
) -> None:
    """Run a cluster simulation and write its run directory."""
    from cluster.runner import run_config

    if seed is not None and seed < 0:
        raise ConfigError(str(config), "--seed", f"{seed} is negative; a seed is an integer >= 0")
    if progress_file is not None and not progress_file.parent.is_dir():
        raise ConfigError(str(config), "--progress-file", f"{progress_file.parent}: no such directory")
    if xentrace is not None and not xentrace.parent.is_dir():
        raise ConfigError(str(config), "--xentrace", f"{xentrace.parent}: no such directory")
    if xentrace is not None and xentrace.is_dir():
        raise ConfigError(str(config), "--xentrace", f"{xentrace}: is a directory; give a file name")
    interruptible()
    bar = _Progress(enabled=not quiet and err.is_terminal)

    def progress(t: int, end: int) -> None:
        bar.update(t, end)
        if progress_file is not None:
            atomic_write(progress_file, json.dumps({"sim_ns": t, "end_ns": end}) + "\n")

    try:
        res = run_config(
            config,
            backend=backend.value,
            address=address,
            out=out_dir,
            seed=seed,
            overrides=set_,
            force=force,
            progress=progress,
            xentrace=xentrace,
        )
    finally:
        bar.close()
    if not quiet:
        print_summary(res.summary)
    out.print(f"run directory: {res.out}")
    xt = res.summary.get("xentrace")
    if xt:
        out.print(f"xentrace: {', '.join(xt['files'])} (TSC {xt['tsc_hz'] / 1e9:g} GHz: xenalyze --summary --cpu-hz={xt['tsc_hz'] / 1e9:g}G FILE)")
    out.print(f"trace_digest: {res.summary['trace_digest']}  simulation {res.summary['sim_wall_s']:.2f} s wall, start-up {res.startup_s:.2f} s (Ray, actors, domains)")


class _Progress:
    """A rich progress bar that appears only if the run lasts more than two seconds."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def update(self, t: int, end: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            if time.perf_counter() - self.t0 < 2.0:
                return
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("simulating"),
                BarColumn(),
                TextColumn("{task.completed:.0f}/{task.total:.0f} ms"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("sim", total=end / 1e6)
        if self.task is not None:
            self.bar.update(self.task, completed=t / 1e6)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_summary(s: dict[str, Any]) -> None:
    t = Table(title=f"domains ({s['backend']}, {s['sim_time_ns'] / 1e9:g} s simulated, seed {s['seed']})")
    for col in ("domain", "host", "vCPUs", "weight", "cap", "CPU %", "wake p50 us", "wake p99 us"):
        t.add_column(col, justify="right" if col not in ("domain", "host") else "left")
    for d in s["domains"]:
        p50 = [v["wake_latency_us"]["p50"] for v in d["vcpus"] if v["wake_latency_us"]["p50"] is not None]
        p99 = [v["wake_latency_us"]["p99"] for v in d["vcpus"] if v["wake_latency_us"]["p99"] is not None]
        t.add_row(
            d["name"],
            d["host"],
            str(len(d["vcpus"])),
            str(d["weight"]),
            str(d["cap"]),
            f"{d['cpu_pct']:.2f}",
            f"{max(p50):.1f}" if p50 else "-",
            f"{max(p99):.1f}" if p99 else "-",
        )
    out.print(t)
    pt = Table(title="pCPUs")
    for col in ("host", "pCPU", "busy %", "switches"):
        pt.add_column(col, justify="right" if col != "host" else "left")
    for p in s["pcpus"]:
        tot = p["busy_ns"] + p["idle_ns"]
        pt.add_row(p["host"], str(p["id"]), f"{100 * p['busy_ns'] / tot:.1f}" if tot else "-", str(p["switches"]))
    out.print(pt)
    mem_rows = [d for d in s["domains"] if not d["dom0"] or d.get("work")]
    if mem_rows:
        mt = Table(title="memory and guest work")
        for col in ("domain", "paging", "frames MiB", "pages written", "work / CPU s", "I/O p50 us", "I/O p99 us", "paging ns"):
            mt.add_column(col, justify="right" if col not in ("domain", "paging") else "left")
        for d in mem_rows:
            io = d.get("io_latency_us") or {}
            pg = ", ".join(f"{k} {v / 1e6:.1f}ms" for k, v in sorted(d.get("paging_ns", {}).items()) if k.endswith("_ns"))
            mt.add_row(
                d["name"],
                d.get("paging_mode", ""),
                f"{d['frames'] * 4096 / 2**20:.0f}" if d.get("frames") is not None else "-",
                str(d.get("pages_written", 0)),
                f"{d['work_per_cpu_s']:.0f}" if d.get("work_per_cpu_s") else "-",
                f"{io['p50']:.0f}" if io.get("p50") is not None else "-",
                f"{io['p99']:.0f}" if io.get("p99") is not None else "-",
                pg or "-",
            )
        out.print(mt)
    migs = s.get("migrations", [])
    if migs:
        mg = Table(title="live migrations")
        for col in ("migration", "policy", "status", "total s", "downtime ms", "rounds", "MB sent", "stop reason"):
            mg.add_column(col, justify="left" if col in ("migration", "policy", "status", "stop reason") else "right")
        for m in migs:
            mg.add_row(
                f"{m['domain']} {m['src']}->{m['dst']}",
                m["policy"],
                m["status"] + (f" ({m['reason']})" if m["reason"] else ""),
                f"{m['total_ms'] / 1000:.3f}" if m["total_ms"] is not None else "-",
                f"{m['downtime_ms']:.2f}" if m["downtime_ms"] is not None else "-",
                str(m["rounds"]),
                f"{m['bytes_sent'] / 1e6:.1f}",
                m["stop_reason"] or "-",
            )
        out.print(mg)
    hk = s.get("hypercalls", {}).get("by_kind", {})
    if hk:
        ht = Table(title="hypercalls")
        for col in ("hypercall", "count", "preempted", "stay p99 us", "stay max us"):
            ht.add_column(col, justify="right" if col != "hypercall" else "left")
        for k, v in hk.items():
            st = v.get("stay_us", {})
            ht.add_row(k, str(v["count"]), str(v["preempted"]), f"{st.get('p99') or 0:.2f}", f"{st.get('max') or 0:.2f}")
        out.print(ht)
    cl = s.get("cluster")
    if cl:
        ct = Table(title="cluster")
        for col in ("migrations", "done", "aborted", "downtime ms", "SLA viol. %", "energy J", "active mean/end"):
            ct.add_column(col, justify="right")
        share = cl.get("sla_violation_share")
        ct.add_row(
            str(cl["migrations_started"]),
            str(cl["migrations_completed"]),
            str(cl["migrations_aborted"]),
            f"{cl['migration_downtime_ms']:.2f}",
            f"{100 * share:.3f}" if share is not None else "-",
            f"{cl['energy_j']:.1f}" if cl.get("energy_j") is not None else "-",
            f"{cl['hosts_active_mean']:.2f}/{cl['hosts_active_final']}" if cl.get("hosts_active_mean") is not None else "-",
        )
        out.print(ct)


def main() -> None:
    app()


# Sub-commands defined in their own modules register themselves on ``app``.
def _register_subcommands() -> None:
    import importlib

    for mod in ("cluster.cli_batch",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


_register_subcommands()


if __name__ == "__main__":  # pragma: no cover
    from cluster.cli import main as _main  # the imported module's app carries the sub-commands

    _main()
