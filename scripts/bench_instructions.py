#!/usr/bin/env python
"""Instructions the compiled engine executes per simulated second, counted by valgrind.

Wall-time figures on a shared or virtual machine move by tens of percent from one run to the
next; instruction counts do not (the same binary, inputs and environment give the same count,
whatever else the machine is doing). This runs each scenario of ``configs/bench/`` inline under
``valgrind --tool=callgrind``, counting only inside ``EpochEngine.run_until`` (the simulation,
not imports, configuration or domain creation), and prints millions of instructions per
simulated second and the run's trace digest.

    python scripts/bench_instructions.py                 # mixed, mixed-credit2, cpu, small, twohost
    python scripts/bench_instructions.py -s mixed --sim-ms 500
    python scripts/bench_instructions.py --json

Needs valgrind and the compiled engine (``hosts.COMPILED``); a run takes about 50x its normal
wall time, hence the short default lengths.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: scenario -> (config in configs/bench/, overrides, simulated ms)
SCENARIOS: dict[str, tuple[str, list[str], int]] = {
    "mixed": ("mixed", [], 2000),
    "mixed-credit2": ("mixed", ["hosts.*.scheduler={name: credit2}"], 1000),
    "cpu": ("cpu", [], 2000),
    "small": ("small", [], 2000),
    "twohost": ("twohost", [], 2000),
}
SIMULATION = "CPyDef_epoch___EpochEngine___run_until"  # the compiled run_until's C symbol

CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from cluster.config import load_config
from cluster.runner import run_loaded
cfg, resolved = load_config(sys.argv[2], sys.argv[3:])
r = run_loaded(cfg, resolved, backend="inline", write=False)
print("DIGEST", r.summary["trace_digest"])
"""


def count(name: str, sim_ms: int | None) -> dict[str, object]:
    cfg, over, default_ms = SCENARIOS[name]
    ms = sim_ms or default_ms
    with tempfile.TemporaryDirectory(prefix="hvsim-ir-") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        cmd = [
            "valgrind", "--tool=callgrind", f"--toggle-collect={SIMULATION}", f"--callgrind-out-file={out}",
            sys.executable, "-c", CHILD, str(ROOT), str(ROOT / "configs" / "bench" / f"{cfg}.yaml"), *over, f"run.duration_ms={ms}",
        ]  # fmt: skip
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}  # no BLAS threads spinning under valgrind
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    digest = re.search(r"DIGEST (\w+)", p.stdout)
    collected = re.search(r"Collected : (\d+)", p.stderr)
    if p.returncode != 0 or digest is None or collected is None:
        raise SystemExit(f"bench_instructions: {name} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    ir = int(collected.group(1))
    return {"scenario": name, "sim_ms": ms, "instructions": ir, "m_instructions_per_sim_s": round(ir / ms / 1000.0, 1), "digest": digest.group(1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-s", "--scenario", action="append", choices=sorted(SCENARIOS), help="default: all")
    ap.add_argument("--sim-ms", type=int, default=None, help="simulated ms per scenario (default per scenario)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("bench_instructions: valgrind is not installed (Debian: apt install valgrind)", file=sys.stderr)
        return 2
    import hosts

    if not hosts.COMPILED:
        print("bench_instructions: the engine is not compiled here (pip install -e . builds it); the count needs its C symbols", file=sys.stderr)
        return 2
    rows = [count(n, a.sim_ms) for n in (a.scenario or list(SCENARIOS))]
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="hvsim engine: instructions inside EpochEngine.run_until (callgrind)")
    for col in ("scenario", "simulated ms", "M instructions per simulated s", "trace digest"):
        t.add_column(col, justify="left" if col in ("scenario", "trace digest") else "right")
    for r in rows:
        t.add_row(str(r["scenario"]), str(r["sim_ms"]), str(r["m_instructions_per_sim_s"]), str(r["digest"])[:16])
    Console().print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
