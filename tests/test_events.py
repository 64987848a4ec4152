"""Timed toolstack events: pin, set (weight/cap), pause/unpause, destroy."""

from __future__ import annotations

import numpy as np
import pytest

from hosts.vcpu import make_vid

from conftest import simulate


def base(events, pcpus=2, duration_ms=1000):
    return {
        "run": {"seed": 5, "duration_ms": duration_ms, "debug_checks": True},
        "hosts": [{"name": "h0", "pcpus": pcpus, "mem_mib": 2048}],
        "domains": [
            {"name": "a", "host": "h0", "vcpus": 1, "workload": {"kind": "cpu"}},
            {"name": "b", "host": "h0", "vcpus": 1, "workload": {"kind": "cpu"}},
            {"name": "c", "host": "h0", "vcpus": 1, "workload": {"kind": "cpu"}},
        ],
        "events": events,
    }


def intervals(res, dom_name):
    uid = next(d["uid"] for d in res.summary["domains"] if d["name"] == dom_name)
    out = []
    for r in res.reports["h0"]:
        tr = np.frombuffer(r.trace, dtype=np.int64).reshape(-1, 3)
        for s, e, vid in tr.tolist():
            if vid == make_vid(uid, 0):
                out.append((s, e, r.pcpu))
    return sorted(out)


def test_pin_moves_a_vcpu_and_keeps_it_there():
    res = simulate(base([{"at_ms": 400, "pin": {"domain": "a", "vcpu": 0, "hard": [1]}}]))
    after = [(s, e, p) for s, e, p in intervals(res, "a") if s >= 400_000_000]
    assert after and all(p == 1 for _, _, p in after)
    log = res.manager_state["log"]
    assert log[0]["event"] == "pin" and log[0]["at_ns"] == 400_000_000


def test_set_weight_shifts_the_shares():
    # one pCPU, a and b share it; at 500 ms a's weight becomes 3x b's
    doc = base([{"at_ms": 500, "set": {"domain": "a", "weight": 768}}], pcpus=1, duration_ms=3500)
    doc["domains"] = doc["domains"][:2]
    res = simulate(doc)
    ia, ib = intervals(res, "a"), intervals(res, "b")
    late = lambda iv: sum(min(e, 3_500_000_000) - max(s, 1_000_000_000) for s, e, _ in iv if e > 1_000_000_000)
    share_a = late(ia) / (late(ia) + late(ib))
    assert abs(share_a - 0.75) < 0.03  # 768 : 256


def test_pause_and_unpause():
    res = simulate(base([{"at_ms": 300, "pause": {"domain": "c"}}, {"at_ms": 700, "unpause": {"domain": "c"}}]))
    ic = intervals(res, "c")
    assert not [1 for s, e, _ in ic if s < 700_000_000 and e > 300_000_000 + 200_000]  # off while paused
    c = next(d for d in res.summary["domains"] if d["name"] == "c")
    assert abs(c["vcpus"][0]["offline_ns"] - 400_000_000) < 1_000_000


def test_destroy_frees_the_domain():
    res = simulate(base([{"at_ms": 500, "destroy": {"domain": "b"}}]))
    ib = intervals(res, "b")
    assert ib and max(e for _, e, _ in ib) <= 500_000_000
    b = next(d for d in res.summary["domains"] if d["name"] == "b")
    assert b.get("destroyed") is True
    # a and c then share two pCPUs alone: each gets a whole pCPU for the second half
    late_a = sum(e - max(s, 600_000_000) for s, e, _ in intervals(res, "a") if e > 600_000_000)
    assert late_a > 0.95 * 400_000_000


@pytest.mark.parametrize("sched", ["credit", "credit2", "rtds", "null"])
def test_destroy_while_vcpus_are_between_pcpus(sched):
    """With merged rounds a steal or a move emitted at a boundary is still in flight when a
    destroy lands; the record must go with its domain (these instants caught such records
    in flight under Credit). Each destroyed vCPU's runstates add up to its destroy time."""
    for k in (21, 29, 36, 37):
        t = 100 + k * 7.3
        doc = {
            "run": {"seed": k, "duration_ms": 600, "boundary_rounds": 0, "debug_checks": k % 2 == 1},
            "hosts": [{"name": "h", "pcpus": 4, "mem_mib": 2048, "scheduler": {"name": sched}}],
            "domains": [{"name": f"d{i}", "host": "h", "vcpus": 3, "mem_mib": 64,
                         "workload": {"kind": "periodic", "run_ms": 1 + i % 3, "period_ms": 4}} for i in range(4)],
            "events": [{"at_ms": t, "destroy": {"domain": "d1"}}, {"at_ms": t + 40.5, "destroy": {"domain": "d2"}}],
        }
        res = simulate(doc)
        for name, gone_ms in (("d1", t), ("d2", t + 40.5)):
            d = next(d for d in res.summary["domains"] if d["name"] == name)
            totals = [sum(v[f] for f in ("running_ns", "runnable_ns", "blocked_ns", "offline_ns")) for v in d["vcpus"]]
            assert totals == [round(gone_ms * 1e6)] * 3, (k, name)
        d3 = next(d for d in res.summary["domains"] if d["name"] == "d3")
        assert [sum(v[f] for f in ("running_ns", "runnable_ns", "blocked_ns", "offline_ns")) for v in d3["vcpus"]] == [600_000_000] * 3
