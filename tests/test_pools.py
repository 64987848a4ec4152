"""cpupools: a host's pCPUs split into pools; domains run only in their pool and can be moved."""

from __future__ import annotations

import numpy as np

from hosts.vcpu import make_vid

from conftest import simulate


def pools_doc(events=()):
    return {
        "run": {"seed": 2, "duration_ms": 1000, "debug_checks": True},
        "hosts": [
            {
                "name": "h0",
                "pcpus": 4,
                "mem_mib": 2048,
                "pools": [
                    {"name": "Pool-0", "cpus": [0, 1], "scheduler": {"name": "credit"}},
                    {"name": "batch", "cpus": [2, 3], "scheduler": {"name": "credit", "tslice_ms": 10}},
                ],
            }
        ],
        "domains": [
            {"name": "a", "host": "h0", "vcpus": 2, "workload": {"kind": "cpu"}},
            {"name": "b", "host": "h0", "vcpus": 2, "pool": "batch", "workload": {"kind": "io", "think_ms": 2, "burst_us": 500}},
            {"name": "c", "host": "h0", "vcpus": 3, "pool": "batch", "workload": {"kind": "cpu"}},
        ],
        "events": list(events),
    }


def runs(res, dom):
    uid = next(d["uid"] for d in res.summary["domains"] if d["name"] == dom)
    out = []
    for r in res.reports["h0"]:
        tr = np.frombuffer(r.trace, dtype=np.int64).reshape(-1, 3)
        out += [(b, e, r.pcpu) for b, e, v in tr.tolist() if v >> 12 == uid]
    return out


def test_domains_never_run_outside_their_pool():
    res = simulate(pools_doc())
    assert {p for _, _, p in runs(res, "a")} <= {0, 1}
    assert {p for _, _, p in runs(res, "b")} | {p for _, _, p in runs(res, "c")} <= {2, 3}
    a = next(d for d in res.summary["domains"] if d["name"] == "a")
    assert abs(a["cpu_pct"] - 200.0) < 1e-6  # two hogs alone in a two-pCPU pool


def test_move_between_pools():
    res = simulate(pools_doc([{"at_ms": 400, "move_pool": {"domain": "a", "pool": "batch"}}]))
    ra = runs(res, "a")
    assert {p for b, e, p in ra if e <= 400_000_000} <= {0, 1}
    after = [(b, e, p) for b, e, p in ra if b >= 400_000_000]
    assert after and {p for _, _, p in after} <= {2, 3}
    assert res.summary["pcpus"][0]["busy_ns"] < 0.5 * 1_000_000_000  # pool 0 idles after the move
