#!/usr/bin/env python
"""hvsim benchmarks: every figure measured side by side in one run, so machine noise cancels
in the ratios. Scenarios are the configs in configs/bench/ (one per file, named by the file).

    python scripts/bench.py                 # all scenarios, full length
    python scripts/bench.py --quick         # short runs (CI smoke; no figures are asserted)
    python scripts/bench.py --json          # machine-readable
    python scripts/bench.py -s small -s cpu # some scenarios
    python scripts/bench.py --scaling       # 1, 2, 4, 8, 16 hosts of 4 pCPUs, inline and Ray

Per scenario: simulated seconds per wall second on inline and on Ray and their ratio,
scheduler events per wall second (inline), epoch boundaries per simulated second, Ray
start-up time apart from the run (ray.init + building the cluster: actors, domains, memory), peak RSS of the
driver and of one pCPU actor, and for migrations the total time, downtime, data sent and the
run's wall time. Variants (VARIANTS below) run a scenario file with overrides: the default
scheduler, the other pre-copy policies. A figure that does not apply is null.

``--scaling`` runs one cluster per size (1, 2, 4, 8, 16 hosts of 4 pCPUs, each host with the
"mixed" scenario's host0 guests, 10 simulated s each, ``--sim-s``; ``--repeat N`` for medians) on each backend and prints
wall seconds per simulated second per pCPU: flat means the cost is linear in the cluster's
size; and Ray's start-up per cluster (actors, shared memory, domains). The table's header says which
engine ran (mypyc-compiled or pure Python: ``hosts.COMPILED``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import sys
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster.config import ConfigError, load_config  # noqa: E402
from cluster.runner import run_loaded  # noqa: E402


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set of a process (Linux VmHWM), else its current RSS."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except Exception:
        return None


def actor_probe(be) -> dict:
    """Called before the Ray run finishes: the largest peak RSS of any pCPU actor's process
    (masters included: they hold the host engines)."""
    peaks = [vm_hwm_mb(pid) for pids in be.pids.values() for pid in pids]
    peaks = [p for p in peaks if p is not None]
    return {"actor_peak_rss_mb": max(peaks) if peaks else None}


# Variants: a scenario file plus overrides, so that one workload is measured under both
# Credit (the files' scheduler, comparable across versions) and the default Credit2.
# The migration scenario runs under each pre-copy policy.
VARIANTS = {
    "mixed-credit2": ("mixed", ["hosts.*.scheduler={name: credit2}"]),
    "migration-legacy": ("migration", ["events.0.migrate.policy=xen-legacy"]),
    "migration-downtime": ("migration", ["events.0.migrate.policy=downtime-target"]),
}


def scenario_names() -> list[str]:
    return sorted([p.stem for p in (ROOT / "configs" / "bench").glob("*.yaml")] + list(VARIANTS))


def resolve(name: str) -> tuple[Path, list[str]]:
    base, sets = VARIANTS.get(name, (name, []))
    return ROOT / "configs" / "bench" / f"{base}.yaml", list(sets)


class RssPeak:
    """Peak resident set of this process while the block runs (sampled every 10 ms; the
    kernel's own peak, VmHWM, cannot be reset between scenarios)."""

    def __enter__(self) -> "RssPeak":
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mb(self) -> float:
        return round(self.peak / 2**20, 1)


def migration_figures(summary: dict, backend: str, wall_s: float, sim_s: float) -> dict:
    """The first migration's total time, downtime and data sent, and the wall time of the
    whole run that contains it."""
    migs = summary.get("migrations") or []
    if not migs or migs[0].get("total_ms") is None:
        return {}
    m = migs[0]
    return {
        "migration_policy": m["policy"],
        "migration_total_s": round(m["total_ms"] / 1000.0, 3),
        "migration_downtime_ms": round(m["downtime_ms"], 2),
        "migration_sent_gb": round(m["bytes_sent"] / 1e9, 3),
        f"migration_wall_s_{backend}": round(wall_s, 2),
    }


def run_one(path: Path, backend: str, duration_ms: float | None, extra: list[str]):
    overrides = list(extra)
    if duration_ms is not None:
        overrides.append(f"run.duration_ms={duration_ms}")
    cfg, resolved = load_config(path, overrides)
    return run_loaded(cfg, resolved, backend=backend, write=False, probe=actor_probe if backend == "ray" else None)


def _spin(n: int) -> float:
    t = time.perf_counter()
    s = 0
    for i in range(n):
        s += i * i % 7
    return time.perf_counter() - t


def parallel_speedup(n: int = 3_000_000, rounds: int = 3) -> float:
    """How much faster two processes do two equal pieces of plain Python work than one process
    does both: the ceiling of any two-process speed-up here (2.0 on two idle physical cores;
    less on hyperthreads, shared or busy cores). Median of ``rounds``."""
    import multiprocessing as mp

    ratios = []
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_spin, [1000, 1000])
        for _ in range(rounds):
            t = time.perf_counter()
            _spin(n)
            _spin(n)
            one = time.perf_counter() - t
            t = time.perf_counter()
            pool.map(_spin, [n, n])
            ratios.append(one / (time.perf_counter() - t))
    return round(statistics.median(ratios), 2)


def machine() -> dict:
    import hosts

    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "engine": "compiled (mypyc)" if hosts.COMPILED else "pure Python",
        "two_process_speedup": parallel_speedup(),
    }


SCALING_HOSTS = (1, 2, 4, 8, 16)


def scaling_doc(n_hosts: int, sim_ms: float) -> dict:
    """``n_hosts`` copies of the mixed scenario's first host (4 pCPUs, Domain-0 with 2 vCPUs,
    a CPU hog, split-driver I/O clients and periodic tasks, 12 guest vCPUs)."""
    import yaml

    base = yaml.safe_load((ROOT / "configs" / "bench" / "mixed.yaml").read_text())
    host = base["hosts"][0]
    guests = [d for d in base["domains"] if d["host"] == host["name"]]
    doc = {"run": {**base["run"], "duration_ms": sim_ms}, "hosts": [], "domains": []}
    for i in range(n_hosts):
        doc["hosts"].append({**host, "name": f"host{i}"})
        doc["domains"] += [{**d, "name": f"{d['name']}h{i}", "host": f"host{i}"} for d in guests]
    return doc


def scaling(quick: bool, backends: list[str], sim_s: float | None = None, repeat: int = 1) -> dict:
    """Each size run ``repeat`` times per backend, alternating; wall figures are medians and
    the digests must agree across every run."""
    from cluster.config import resolved_doc, validate_doc
    from cluster.raysession import RaySession

    # 10 simulated s: the 1-host row then lasts about half a wall second; at 1 s, fixed costs
    # of a run (tens of ms) made the per-pCPU figures of small clusters look up to 2x dearer
    sim_ms = 1000.0 * (sim_s if sim_s is not None else 0.2 if quick else 10.0)
    out: dict = {"machine": machine(), "sim_s": sim_ms / 1000.0, "runs_each": repeat, "rows": []}
    session = RaySession().start() if "ray" in backends else None
    try:
        warm = validate_doc(scaling_doc(1, 50.0), "<scaling warm-up>")
        for be in backends:  # imports, first actors and caches are paid here, not by the 1-host row
            run_loaded(warm, resolved_doc(warm), backend=be, write=False)
        for n in SCALING_HOSTS:
            cfg = validate_doc(scaling_doc(n, sim_ms), f"<scaling {n} hosts>")
            pcpus = sum(h.pcpus for h in cfg.hosts)
            row: dict = {"hosts": n, "pcpus": pcpus}
            digests: set[str] = set()
            walls: dict[str, list[float]] = {be: [] for be in backends}
            startups: list[float] = []
            for _ in range(repeat):  # alternating, so that a noisy minute hits both backends
                for be in backends:
                    r = run_loaded(cfg, resolved_doc(cfg), backend=be, write=False)
                    walls[be].append(r.summary["sim_wall_s"])
                    if be == "ray":
                        startups.append(r.summary["startup_s"])  # actors, segments, domains
                    digests.add(r.summary["trace_digest"])
            for be in backends:
                w = statistics.median(walls[be])
                row[f"{be}_wall_s"] = round(w, 3)
                row[f"{be}_us_per_sim_ms_per_pcpu"] = round(w / (sim_ms / 1000.0) / pcpus * 1000.0, 2)
            if startups:
                row["ray_startup_s"] = round(statistics.median(startups), 2)
            if len(backends) == 2:
                row["ray_over_inline"] = round(row["inline_wall_s"] / row["ray_wall_s"], 3)
            if len(backends) == 2 or repeat > 1:
                row["digests_equal"] = len(digests) == 1
            out["rows"].append(row)
    finally:
        if session is not None:
            session.close()
    first = out["rows"][0]
    for row in out["rows"]:
        for be in backends:
            row[f"{be}_vs_1_host"] = round(row[f"{be}_us_per_sim_ms_per_pcpu"] / first[f"{be}_us_per_sim_ms_per_pcpu"], 3)
    return out


def print_scaling(res: dict, backends: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    m = res["machine"]
    t = Table(title=f"hvsim scaling: {res['sim_s']} simulated s per cluster, {res['runs_each']} run(s) per backend, medians ({m['cpus']} CPUs, Python {m['python']}, {m['engine']} engine; two processes of plain Python work run {m['two_process_speedup']}x one)")
    cols = ["hosts", "pcpus"]
    for be in backends:
        cols += [f"{be}_wall_s", f"{be}_us_per_sim_ms_per_pcpu", f"{be}_vs_1_host"]
    if "ray" in backends:
        cols.append("ray_startup_s")
    if len(backends) == 2:
        cols.append("ray_over_inline")
    if len(backends) == 2 or res["runs_each"] > 1:
        cols.append("digests_equal")
    heads = {"hosts": "hosts", "pcpus": "pCPUs", "ray_over_inline": "ray speed / inline", "digests_equal": "digests equal", "ray_startup_s": "ray: start-up s (actors, domains)"}
    for c in cols:
        be, _, rest = c.partition("_")
        label = heads.get(c) or f"{be}: " + {"wall_s": "wall s", "us_per_sim_ms_per_pcpu": "wall us per sim ms per pCPU", "vs_1_host": "per-pCPU cost vs 1 host"}[rest]
        t.add_column(label, justify="right")
    for row in res["rows"]:
        t.add_row(*[str(row.get(c, "-")) for c in cols])
    Console(width=160).print(t)


def bench(names: list[str], quick: bool, backends: list[str], extra: list[str], layouts: bool = False, repeat: int = 1) -> dict:
    """Every scenario run ``repeat`` times per backend (alternating); wall-time figures are the
    medians, the others come from the last run."""
    from cluster.raysession import RaySession

    out: dict = {"scenarios": {}, "machine": machine()}
    session = None
    ray_init_s = None
    if "ray" in backends:
        t0 = time.perf_counter()
        session = RaySession().start()
        ray_init_s = time.perf_counter() - t0
    try:
        for name in names:
            path, sets = resolve(name)
            extra_n = sets + list(extra)
            cfg, _ = load_config(path, extra_n)
            dur = min(cfg.run.duration_ms, 1000.0) if quick else None
            sim_s = (dur or cfg.run.duration_ms) / 1000.0
            row: dict = {k: None for k in ("inline_sim_s_per_wall_s", "ray_sim_s_per_wall_s", "ray_over_inline", "events_per_wall_s",
                                            "epochs_per_sim_s", "ray_startup_s", "peak_rss_mb_driver", "peak_rss_mb_actor", "digests_equal",
                                            "migration_policy", "migration_total_s", "migration_downtime_ms", "migration_sent_gb",
                                            "migration_wall_s_inline", "migration_wall_s_ray", "ray_processes", "ray_per_pcpu_sim_s_per_wall_s", "ray_per_pcpu_over_inline")}
            digests = {}
            kinds = [(be, be, []) for be in backends]
            if layouts and "ray" in backends:  # the classic layout, one process per pCPU, side by side
                kinds.append(("ray_per_pcpu", "ray", ["run.ray_processes_per_host=4096"]))
            walls: dict[str, list[float]] = {k: [] for k, _, _ in kinds}
            last: dict = {}
            with RssPeak() as rss:  # the driver, over every run
                for _ in range(repeat):  # alternating, so that a noisy minute hits every kind alike
                    for key, be, more in kinds:
                        r = run_one(path, be, dur, extra_n + more)
                        walls[key].append(r.summary["sim_wall_s"])
                        last[key] = r
                        digests.setdefault(key, set()).add(r.summary["trace_digest"])
            w_of = {k: statistics.median(v) for k, v in walls.items()}
            if "inline" in last:
                r, w = last["inline"], w_of["inline"]
                row["inline_sim_s_per_wall_s"] = round(sim_s / w, 3)
                row["events_per_wall_s"] = round(r.summary["scheduler_events"] / w)
                row["epochs_per_sim_s"] = round(r.summary.get("boundaries", 0) / sim_s, 1) if r.summary.get("boundaries") is not None else None
                row.update(migration_figures(r.summary, "inline", w, sim_s))
            if "ray" in last:
                r, w = last["ray"], w_of["ray"]
                row["ray_sim_s_per_wall_s"] = round(sim_s / w, 3)
                row["ray_startup_s"] = round(ray_init_s + r.summary["startup_s"], 2)
                row["peak_rss_mb_actor"] = round(r.summary["actor_peak_rss_mb"], 1) if r.summary.get("actor_peak_rss_mb") else None
                row.update({k: v for k, v in migration_figures(r.summary, "ray", w, sim_s).items() if row.get(k) is None or k.endswith("_ray")})
                if row["epochs_per_sim_s"] is None and r.summary.get("boundaries") is not None:
                    row["epochs_per_sim_s"] = round(r.summary["boundaries"] / sim_s, 1)
                procs = r.summary.get("pcpu_processes") or {}
                row["ray_processes"] = f"{sum(len(g) for g in procs.values())} for {sum(len(x) for g in procs.values() for x in g)} pCPUs"
            if "ray_per_pcpu" in last:
                row["ray_per_pcpu_sim_s_per_wall_s"] = round(sim_s / w_of["ray_per_pcpu"], 3)
            row["runs_each"] = repeat
            if row["inline_sim_s_per_wall_s"] and row["ray_sim_s_per_wall_s"]:
                row["ray_over_inline"] = round(row["ray_sim_s_per_wall_s"] / row["inline_sim_s_per_wall_s"], 3)
            if row["inline_sim_s_per_wall_s"] and row["ray_per_pcpu_sim_s_per_wall_s"]:
                row["ray_per_pcpu_over_inline"] = round(row["ray_per_pcpu_sim_s_per_wall_s"] / row["inline_sim_s_per_wall_s"], 3)
            if len(digests) >= 2 or repeat > 1:
                row["digests_equal"] = len(set().union(*digests.values())) == 1
            row["peak_rss_mb_driver"] = rss.mb
            row["sim_s"] = sim_s
            out["scenarios"][name] = row
    finally:
        if session is not None:
            session.close()
    return out


ROWS = [
    ("simulated seconds per run", "sim_s"),
    ("runs per backend (speeds: medians)", "runs_each"),
    ("inline: sim s / wall s", "inline_sim_s_per_wall_s"),
    ("ray: sim s / wall s", "ray_sim_s_per_wall_s"),
    ("ray / inline", "ray_over_inline"),
    ("ray: processes stepping pCPUs", "ray_processes"),
    ("ray, a process per pCPU: sim s / wall s", "ray_per_pcpu_sim_s_per_wall_s"),
    ("ray, a process per pCPU / inline", "ray_per_pcpu_over_inline"),
    ("scheduler events / wall s (inline)", "events_per_wall_s"),
    ("epoch boundaries / sim s", "epochs_per_sim_s"),
    ("ray start-up s (init + actors + domains)", "ray_startup_s"),
    ("peak RSS driver MB", "peak_rss_mb_driver"),
    ("peak RSS one pCPU actor MB", "peak_rss_mb_actor"),
    ("digests equal (every run)", "digests_equal"),
    ("migration: policy", "migration_policy"),
    ("migration: total s (simulated)", "migration_total_s"),
    ("migration: downtime ms", "migration_downtime_ms"),
    ("migration: data sent GB", "migration_sent_gb"),
    ("migration: run's wall s inline", "migration_wall_s_inline"),
    ("migration: run's wall s ray", "migration_wall_s_ray"),
]


def print_table(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = res["machine"]
    t = Table(title=f"hvsim bench ({m['cpus']} CPUs, Python {m['python']}, {m['engine']} engine; two processes of plain Python work run {m['two_process_speedup']}x one)")
    t.add_column("figure")
    names = list(res["scenarios"])
    for n in names:
        t.add_column(n, justify="right")
    for label, key in ROWS:
        t.add_row(label, *["-" if res["scenarios"][n].get(key) is None else str(res["scenarios"][n][key]) for n in names])
    Console(width=max(100, 40 + 14 * len(names))).print(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-s", "--scenario", action="append", help="scenario name (configs/bench/NAME.yaml); default all")
    ap.add_argument("--quick", action="store_true", help="short runs for a CI smoke test")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--backend", action="append", choices=["inline", "ray"], help="default both")
    ap.add_argument("--set", action="append", default=[], help="override for every scenario, PATH=VALUE")
    ap.add_argument("--scaling", action="store_true", help="the scaling table (1 to 16 hosts of 4 pCPUs) instead of the scenarios")
    ap.add_argument("--sim-s", type=float, default=None, metavar="S", help="with --scaling: simulated seconds per cluster (default 10; 0.2 with --quick)")
    ap.add_argument("--layouts", action="store_true", help="also run Ray with one process per pCPU (run.ray_processes_per_host), side by side")
    ap.add_argument("--repeat", type=int, default=1, metavar="N", help="run each scenario (or, with --scaling, each size) N times per backend, alternating; speeds are medians")
    a = ap.parse_args()
    if a.scaling:
        backends = a.backend or ["inline", "ray"]
        with contextlib.redirect_stdout(sys.stderr) if a.json else contextlib.nullcontext():
            sres = scaling(a.quick, backends, a.sim_s, max(1, a.repeat))
        if a.json:
            print(json.dumps(sres, indent=2))
        else:
            print_scaling(sres, backends)
        return 0
    names = a.scenario or scenario_names()
    unknown = [n for n in names if n not in scenario_names()]
    if unknown:
        print(f"bench: --scenario {unknown[0]!r} is not a scenario; scenarios: {', '.join(scenario_names())}", file=sys.stderr)
        return 2
    try:
        # Ray prints the raylet's notices to sys.stdout; with --json they go to stderr instead
        with contextlib.redirect_stdout(sys.stderr) if a.json else contextlib.nullcontext():
            res = bench(names, a.quick, a.backend or ["inline", "ray"], a.set, a.layouts, max(1, a.repeat))
    except ConfigError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
