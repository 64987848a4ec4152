#!/usr/bin/env python
"""Host memory cost per guest page (tag mode and full mode, measured RSS), and the wall time
of a run where one 4 GiB guest dirties 100 MB/s for 10 simulated seconds.

    python scripts/bench_memory.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_per_page(full: bool, pages: int) -> float:
    """Bytes of RSS per guest page: a host just big enough for one domain of ``pages``, every
    page written once, measured in a fresh process (so nothing else is in the figure)."""
    code = f"""
import gc, psutil, numpy as np
from hosts.memory import HostMemory
from hosts.domain import DomainInfo
p = psutil.Process()
gc.collect(); before = p.memory_info().rss
m = HostMemory.inline({pages}, full={full})
d = DomainInfo(uid=1, name="g", nr_vcpus=1, mem_pages={pages}, max_pages={pages})
m.create_domain(d)
m.write_tags(d, np.arange({pages}), np.arange({pages}, dtype=np.uint64) + 1)
m.enable_log_dirty(d); m.write_tags(d, np.arange({pages}), 7)
print((p.memory_info().rss - before) / {pages})
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return float(out.stdout.strip())


def dirty_run(backend: str, sim_s: float) -> dict:
    from cluster.config import validate_doc, resolved_doc
    from cluster.runner import run_loaded

    doc = {
        "run": {"seed": 1, "duration_ms": sim_s * 1000},
        "hosts": [{"name": "h0", "pcpus": 2, "mem_mib": 6144}],
        "domains": [{"name": "big", "host": "h0", "mem_mib": 4096, "workload": {"kind": "memwrite", "dirty_mb_s": 100}}],
    }
    cfg = validate_doc(doc, "<bench>")
    t0 = time.perf_counter()
    r = run_loaded(cfg, resolved_doc(cfg), backend=backend, write=False)
    total = time.perf_counter() - t0
    big = next(d for d in r.summary["domains"] if d["name"] == "big")
    return {"backend": backend, "sim_s": sim_s, "wall_s": round(r.summary["sim_wall_s"], 3), "wall_incl_startup_s": round(total, 3), "pages_written": big["pages_written"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    pages = (256 << 20) // 4096 if a.quick else (1 << 30) // 4096
    res = {
        "rss_bytes_per_page_tag": round(rss_per_page(False, pages), 2),
        "rss_bytes_per_page_full": round(rss_per_page(True, pages), 1),
        "pages_measured": pages,
        "dirty_4g_100mbs": [dirty_run(b, 1.0 if a.quick else 10.0) for b in ("inline", "ray")],
    }
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"host memory per guest page: tag mode {res['rss_bytes_per_page_tag']} B, full mode {res['rss_bytes_per_page_full']} B (measured over {pages} pages)")
        for r in res["dirty_4g_100mbs"]:
            print(f"4 GiB guest dirtying 100 MB/s for {r['sim_s']:g} simulated s on {r['backend']}: {r['wall_s']} s wall "
                  f"({r['wall_incl_startup_s']} s with start-up), {r['pages_written']} pages written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
