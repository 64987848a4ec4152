"""Batch overhead and the Ray launcher's speed-up over the serial one.

Runs one sweep of N tiny trials (default 64: one host, one pCPU, two CPU hogs, 100 ms simulated)
with the serial launcher and with the Ray launcher (an embedded local Ray, started first and
timed on its own), each into a fresh batch directory, and prints:

* batch wall time (planning excluded, Ray start-up excluded and shown apart);
* the trials' own time, two ways: the sum of ``wall_s`` (the simulation, from summary.json) and
  the sum of ``trial_wall_s`` (the whole trial where it ran: validation, run_loaded with its
  reaper process, writing the run directory, packing it);
* per-trial overhead = (batch wall x slots - trials' own time) / N, slots = trials run at once
  (1 serial, the Ray CPUs otherwise): what a trial costs beyond its own work;
* the speed-up of Ray over serial.

    python scripts/bench_batch.py [--trials 64] [--duration-ms 100] [--io] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster.batch import RayLauncher, SerialLauncher, run_batch  # noqa: E402
from cluster.sweep import plan_sweep  # noqa: E402


def tiny_sweep(where: Path, trials: int, duration_ms: float, io: bool = False) -> Path:
    base = {
        "run": {"seed": 1, "duration_ms": duration_ms},
        "hosts": [{"name": "h0", "pcpus": 1, "mem_mib": 512, "scheduler": {"name": "credit"}}],
        "domains": [
            {"name": "a", "host": "h0", "mem_mib": 64, "weight": 256, "workload": {"kind": "cpu"}},
            {"name": "b", "host": "h0", "mem_mib": 64, "weight": 256, "workload": {"kind": "cpu"}},
        ],
    }
    if io:  # busier trials: 2 pCPUs, 4 I/O guests waking every ms or so
        base["hosts"][0]["pcpus"] = 2
        base["domains"] = [{"name": n, "host": "h0", "mem_mib": 64, "workload": {"kind": "io", "think_ms": 1, "burst_us": 300}} for n in ("b", "c", "d", "e")]
    points = 8 if trials % 8 == 0 else 1
    (where / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {"name": "bench", "base": "base.yaml", "grid": {"domains.b.weight": [64 * (i + 1) for i in range(points)]}, "repetitions": trials // points}
    p = where / "bench.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def measure(name: str, launcher, sweep_path: Path, out: Path) -> dict:
    sweep, trials = plan_sweep(sweep_path)
    t0 = time.perf_counter()
    res = run_batch(sweep, trials, out, launcher)
    wall = time.perf_counter() - t0
    assert res.counts.failed == 0, res.failed
    sim = sum(float(r["wall_s"]) for r in res.rows)
    whole = sum(float(r["trial_wall_s"]) for r in res.rows)
    slots = getattr(launcher, "parallel", 1) or 1
    n = len(res.rows)
    return {
        "launcher": name,
        "trials": n,
        "slots": slots,
        "batch_wall_s": round(wall, 3),
        "sum_sim_wall_s": round(sim, 3),
        "sum_trial_wall_s": round(whole, 3),
        "overhead_vs_sim_ms": round(1000 * (wall * slots - sim) / n, 1),
        "overhead_vs_trial_ms": round(1000 * (wall * slots - whole) / n, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--duration-ms", type=float, default=100.0)
    ap.add_argument("--io", action="store_true", help="busier trials (4 I/O guests on 2 pCPUs) instead of 2 CPU hogs on 1 pCPU")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    from cluster.raysession import RaySession

    work = Path(tempfile.mkdtemp(prefix="hvsim-bench-batch-"))
    try:
        sweep = tiny_sweep(work, args.trials, args.duration_ms, args.io)
        rows = [measure("serial", SerialLauncher(), sweep, work / "serial")]
        t0 = time.perf_counter()
        session = RaySession().start()  # the launcher reuses it: start-up is timed apart
        ray_start = time.perf_counter() - t0
        try:
            rows.append(measure("ray", RayLauncher(), sweep, work / "ray"))
        finally:
            session.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    serial, ray = rows
    figures = {
        "rows": rows,
        "ray_startup_s": round(ray_start, 2),
        "speedup_ray_over_serial": round(serial["batch_wall_s"] / ray["batch_wall_s"], 2),
        "speedup_including_ray_startup": round(serial["batch_wall_s"] / (ray["batch_wall_s"] + ray_start), 2),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    cols = ["launcher", "trials", "slots", "batch_wall_s", "sum_sim_wall_s", "sum_trial_wall_s", "overhead_vs_sim_ms", "overhead_vs_trial_ms"]
    what = "1 host, 2 pCPUs, 4 I/O guests" if args.io else "1 host, 1 pCPU, 2 CPU hogs"
    print(f"{args.trials} trials of {args.duration_ms:g} ms simulated ({what})")
    print("  ".join(f"{c:>20}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]!s:>20}" for c in cols))
    print(f"Ray start-up (not in batch_wall_s): {figures['ray_startup_s']} s")
    print(f"speed-up of Ray over serial: {figures['speedup_ray_over_serial']}x ({figures['speedup_including_ray_startup']}x counting Ray start-up)")


if __name__ == "__main__":
    main()
