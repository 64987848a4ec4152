"""The scheduler contract, for every registered scheduler.

busy + idle = elapsed on every pCPU; no vCPU on two pCPUs at once; only runnable vCPUs run
and only where their hard affinity allows (checked by the engine at every switch with
``run.debug_checks``); each vCPU's runstate times sum to the simulated time; the running time
in the runstates equals the run intervals in the trace; same seed, same trace.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hosts.sched import REGISTRY
from hosts.vcpu import make_vid

from conftest import simulate

SCHEDULERS = sorted(REGISTRY)

WORKLOADS = [
    {"kind": "cpu"},
    {"kind": "io", "think_ms": 2, "burst_us": 300},
    {"kind": "periodic", "run_ms": 2, "period_ms": 7},
    {"kind": "yield", "run_ms": 1.5},
    {"kind": "idle"},
]


def doc_for(sched: str, seed: int, pcpus: int, doms: list[tuple[int, int, int, int]], duration_ms: int = 600) -> dict:
    domains = []
    for i, (nv, wl, weight, cap) in enumerate(doms):
        d = {"name": f"d{i}", "host": "h0", "vcpus": nv, "mem_mib": 16, "weight": weight, "workload": WORKLOADS[wl]}
        if cap:
            d["cap"] = min(cap, 100 * nv)
        if i == 0 and pcpus > 1:
            d["hard_affinity"] = [pcpus - 1]
        domains.append(d)
    return {
        "run": {"seed": seed, "duration_ms": duration_ms, "debug_checks": True},
        "hosts": [{"name": "h0", "pcpus": pcpus, "mem_mib": 1024, "scheduler": {"name": sched}}],
        "domains": domains,
    }


def check_contract(res, doc) -> None:
    s = res.summary
    T = s["sim_time_ns"]
    for p in s["pcpus"]:
        assert p["busy_ns"] + p["idle_ns"] == T, f"pCPU {p['id']}: busy + idle != elapsed"
    intervals: dict[int, list[tuple[int, int, int]]] = {}
    for r in res.reports["h0"]:
        tr = np.frombuffer(r.trace, dtype=np.int64).reshape(-1, 3)
        assert r.trace_dropped == 0
        for start, end, vid in tr.tolist():
            assert end > start
            intervals.setdefault(vid, []).append((start, end, r.pcpu))
    uid_of = {d["name"]: d["uid"] for d in s["domains"]}
    for vid, ivs in intervals.items():
        ivs.sort()
        for (s0, e0, _), (s1, _e1, _) in zip(ivs, ivs[1:]):
            assert e0 <= s1, f"vCPU {vid:#x} on two pCPUs at once around t={s1}"
    for d in s["domains"]:
        for v in d["vcpus"]:
            tot = v["running_ns"] + v["runnable_ns"] + v["blocked_ns"] + v["offline_ns"]
            assert tot == T, f"{d['name']}.v{v['id']}: runstates sum to {tot}, expected {T}"
            ivs = intervals.get(make_vid(d["uid"], v["id"]), [])
            assert sum(e - b for b, e, _ in ivs) == v["running_ns"]
    # hard affinity of d0 (pinned to the last pCPU in doc_for)
    d0 = next((x for x in doc["domains"] if x["name"] == "d0"), None)
    if d0 is not None and "hard_affinity" in d0:
        for i in range(d0["vcpus"]):
            for _b, _e, pc in intervals.get(make_vid(uid_of["d0"], i), []):
                assert pc in d0["hard_affinity"]


@pytest.mark.parametrize("sched", SCHEDULERS)
def test_contract_mixed(sched):
    doc = doc_for(sched, 11, 3, [(1, 0, 256, 0), (2, 1, 512, 0), (2, 2, 256, 0), (1, 3, 128, 0), (1, 0, 256, 30), (1, 4, 256, 0)])
    res = simulate(doc)
    check_contract(res, doc)
    again = simulate(doc)
    assert again.summary["trace_digest"] == res.summary["trace_digest"]


dom_strategy = st.tuples(st.integers(1, 3), st.integers(0, len(WORKLOADS) - 1), st.sampled_from([64, 256, 512, 1024]), st.sampled_from([0, 0, 20, 60, 150]))


@pytest.mark.parametrize("sched", SCHEDULERS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), pcpus=st.integers(1, 4), doms=st.lists(dom_strategy, min_size=1, max_size=5))
def test_contract_random(sched, seed, pcpus, doms):
    doc = doc_for(sched, seed, pcpus, doms, duration_ms=300)
    check_contract(simulate(doc), doc)
