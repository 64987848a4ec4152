#!/usr/bin/env python
"""Writes the cluster example: synthetic PlanetLab-format traces and the config that uses them.

    python scripts/make_cluster_example.py [--vms 120] [--hosts 16] [--out configs/cluster]

Deterministic (a fixed seed): running it again rewrites the same files. Each trace is one VM's
day in PlanetLab's format (288 CPU-% integers, one per line, 5 minutes apart), shaped like the
CoMon data CloudSim ships: a VM-specific mean (most VMs light, a few heavy), a diurnal swing
with its own phase, noise, and occasional bursts. The config spreads the VMs round-robin
over the hosts (as a data centre before consolidation), turns on threshold consolidation by
live migration and the linear power model with empty hosts switched off.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = 288  # a day of 5-minute samples
SEED = 20121016  # Beloglazov & Buyya's CCPE paper, 2012


def trace(rng: np.random.Generator) -> np.ndarray:
    heavy = rng.random() < 0.15
    mean = rng.uniform(35, 65) if heavy else float(np.clip(rng.lognormal(np.log(12), 0.6), 2, 40))
    swing = mean * rng.uniform(0.2, 0.8)
    phase = rng.uniform(0, 2 * np.pi)
    t = np.arange(SAMPLES) / SAMPLES * 2 * np.pi
    x = mean + swing * np.sin(t + phase) + rng.normal(0, 3, SAMPLES)
    for _ in range(rng.poisson(2)):  # bursts of 30 min to 2 h
        at, n = int(rng.integers(0, SAMPLES)), int(rng.integers(6, 25))
        x[at : at + n] += rng.uniform(15, 40)
    return np.clip(np.round(x), 0, 100).astype(int)


def config(vms: int, hosts: int, mem: list[int]) -> str:
    lines = [
        "# A 16-host cluster of HP ProLiant ML110-like machines (4 pCPUs, 4 GiB) running guests driven by",
        "# PlanetLab-format CPU traces (configs/cluster/traces/, synthetic: scripts/make_cluster_example.py).",
        "# The guests start spread round-robin; every control period (500 ms) the domain manager reads",
        "# each host's utilisation and consolidates with static thresholds (overloaded above 0.8: the",
        "# guest of least memory leaves first; underloaded below 0.5, where the spread-out start puts",
        "# most hosts: all its guests leave if they fit elsewhere), by live migration (Xen's pre-copy",
        "# over 1 GbE), at most 2 migrations per host and 1 per link at a time. Empty hosts are switched",
        "# off; energy uses the ML110 G4's linear model (86 W idle, 117 W busy). One trace day",
        "# (288 x 5 min) takes 24 simulated seconds (time_scale 60: a trace hour per simulated second).",
        "#   hvsim run configs/cluster/consolidation-16.yaml --backend inline",
        "#   hvsim batch configs/sweeps/consolidation-policies.yaml",
        "run: {seed: 16, duration_ms: 24000, control_period_ms: 500}",
        "network: {default_bandwidth_mbit_s: 1000, default_latency_us: 100}",
        "policies:",
        "  consolidation: {mode: threshold, upper: 0.8, lower: 0.5, select: mmt}",
        "  max_concurrent_per_host: 2",
        "  max_concurrent_per_link: 1",
        "power: {model: linear, idle_w: 86, max_w: 117, switch_off_empty: true}",
        "hosts:",
    ]
    for h in range(hosts):
        lines.append(f"  - {{name: h{h:02d}, pcpus: 4, mem_mib: 4096}}")
    lines.append("domains:")
    for v in range(vms):
        lines.append(
            f"  - {{name: vm{v:03d}, host: h{v % hosts:02d}, mem_mib: {mem[v]}, "
            f"workload: {{kind: trace, format: planetlab, path: traces/vm{v:03d}.txt, slot_ms: 20, dirty_mb_s: 2}}}}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vms", type=int, default=120)
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "configs" / "cluster")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(SEED)
    tdir = a.out / "traces"
    tdir.mkdir(parents=True, exist_ok=True)
    mem = [int(x) for x in rng.choice([128, 256, 384, 512], size=a.vms)]
    for v in range(a.vms):
        (tdir / f"vm{v:03d}.txt").write_text("".join(f"{x}\n" for x in trace(rng)))
    (a.out / f"consolidation-{a.hosts}.yaml").write_text(config(a.vms, a.hosts, mem))
    print(f"wrote {a.vms} traces to {tdir} and {a.out / f'consolidation-{a.hosts}.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
