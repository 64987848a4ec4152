"""Golden fingerprints: what a run of each shipped config must keep producing.

A fingerprint is the run's ``trace_digest`` (every context switch of every pCPU, to the ns)
plus a hash of the figures a user reads: per-pCPU busy/idle time and switches, per-vCPU
runstate times and wake-latency percentiles, hypercall counts, paging and work counters and
each migration's figures. Event counts are left out on purpose: an engine that fires fewer
no-op events (same decisions) keeps its fingerprint.

``python tests/golden.py --record`` rewrites ``tests/data/golden.json``; do that only for a
change that is meant to alter results, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
GOLDEN = Path(__file__).resolve().parent / "data" / "golden.json"

#: (name, config file, overrides); bench scenarios are cut short (as the bench's own test does)
_SHORT = {"cpu": 3000, "memory": 1500, "mixed": 3000, "small": 3000}


def cases() -> list[tuple[str, Path, list[str]]]:
    out: list[tuple[str, Path, list[str]]] = []
    for p in sorted((CONFIGS / "validation").glob("*.yaml")):
        out.append((f"validation/{p.stem}", p, []))
    for p in sorted(CONFIGS.glob("*.yaml")):
        over = [] if p.stem in ("quickstart", "paging-modes", "balloon", "dom0-io", "schedulers-compare", "migration-idle") else ["run.duration_ms=6000"]
        out.append((p.stem, p, over))
    for stem, ms in sorted(_SHORT.items()):
        out.append((f"bench/{stem}", CONFIGS / "bench" / f"{stem}.yaml", [f"run.duration_ms={ms}"]))
        if stem == "mixed":
            out.append(("bench/mixed-credit2", CONFIGS / "bench" / "mixed.yaml", [f"run.duration_ms={ms}", "hosts.*.scheduler={name: credit2}"]))
    for pol in ("xen", "xen-legacy", "downtime-target"):
        # the bench's migration at 512 MiB instead of 4 GiB (about 10 simulated s each, so
        # the case stays quick): every policy's stop rules and rounds are pinned
        out.append((f"bench/migration-{pol}", CONFIGS / "bench" / "migration.yaml",
                    [f"events.0.migrate.policy={pol}", "domains.guest.mem_mib=512", "run.duration_ms=20000"]))
    return out


def fingerprint(summary: dict) -> dict:
    figures = {
        "pcpus": [(p["host"], p["id"], p["busy_ns"], p["idle_ns"], p["switches"]) for p in summary["pcpus"]],
        "vcpus": [
            (d["host"], d["name"], v["id"], v["running_ns"], v["runnable_ns"], v["blocked_ns"], v["offline_ns"],
             v["wake_latency_us"])
            for d in summary["domains"] for v in d["vcpus"]
        ],
        "work": [(d["name"], d.get("work"), d.get("pages_written"), d.get("paging_ns"), d.get("frames"), d.get("io_latency_us"))
                 for d in summary["domains"]],
        "hypercalls": summary.get("hypercalls", {}).get("by_kind"),
        "migrations": [{k: v for k, v in m.items() if k not in ("wall_s",)} for m in summary.get("migrations", [])],
    }
    blob = json.dumps(figures, sort_keys=True, default=str).encode()
    return {"trace_digest": summary["trace_digest"], "figures": hashlib.blake2b(blob, digest_size=16).hexdigest()}


def run_case(path: Path, overrides: list[str]) -> dict:
    from cluster.config import load_config
    from cluster.runner import run_loaded

    cfg, resolved = load_config(path, overrides)
    return fingerprint(run_loaded(cfg, resolved, backend="inline", write=False).summary)


def main() -> int:
    sys.path.insert(0, str(ROOT))
    if "--record" not in sys.argv:
        print("usage: python tests/golden.py --record", file=sys.stderr)
        return 2
    out = {}
    for name, path, over in cases():
        out[name] = run_case(path, over)
        print(name, out[name], flush=True)
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
