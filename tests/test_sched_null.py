"""null: static vCPU -> pCPU assignment, a wait queue for the vCPUs that find no free pCPU,
soft affinity first when assigning (checked from the run trace)."""

from __future__ import annotations


from conftest import CONFIGS, cpu_pct, run_ivs, simulate, simulate_file

VAL = CONFIGS / "validation"
MS = 1_000_000


def test_each_vcpu_gets_its_pcpu_alone():
    res = simulate_file(VAL / "null-static.yaml")
    per_pcpu: dict[int, set] = {}
    for vid, ivs in run_ivs(res).items():
        for _s, _e, p in ivs:
            per_pcpu.setdefault(p, set()).add(vid)
    # every pCPU ran at most one vCPU, and every vCPU ran on one pCPU only
    assert all(len(v) == 1 for v in per_pcpu.values()), per_pcpu
    owners = [next(iter(v)) for v in per_pcpu.values()]
    assert len(owners) == len(set(owners))
    got = cpu_pct(res.summary)
    assert got["hog"] == 100.0  # no time slice: never preempted
    io_uid = next(d["uid"] for d in res.summary["domains"] if d["name"] == "io")
    io_pcpu = next(p for p, v in per_pcpu.items() if next(iter(v)) >> 12 == io_uid)
    p = next(x for x in res.summary["pcpus"] if x["id"] == io_pcpu)
    io_run = sum(e - s for s, e, _p in run_ivs(res)[io_uid << 12])
    assert p["busy_ns"] == io_run < 0.5 * res.summary["sim_time_ns"]  # its pCPU idles while io sleeps


def test_extra_vcpus_wait_and_take_a_freed_pcpu():
    res = simulate_file(VAL / "null-waitq.yaml")
    ivs = run_ivs(res)
    uid = {d["name"]: d["uid"] for d in res.summary["domains"]}
    a = ivs[uid["a"] << 12]
    b = ivs[uid["b"] << 12]
    assert all(e <= 1000 * MS for _s, e, _p in a)
    assert sum(e - s for s, e, _p in a) == 1000 * MS  # a had its pCPU alone until destroyed
    assert all(s >= 1000 * MS for s, _e, _p in b)  # b waited...
    T = res.summary["sim_time_ns"]
    assert sum(e - s for s, e, _p in b) == T - 1000 * MS  # ...then had a's pCPU from 1 s on
    assert {p for *_x, p in b} == {p for *_x, p in a}


def test_soft_affinity_picks_the_pcpu_among_free_ones():
    """4 pCPUs: Domain-0 takes pCPU 0; s (soft affinity [3]) is assigned pCPU 3, the first
    free pCPU of its soft affinity, not pCPU 1, the first free one; h then gets pCPU 1."""
    doc = {
        "run": {"seed": 1, "duration_ms": 500, "debug_checks": True},
        "hosts": [{"name": "h0", "pcpus": 4, "mem_mib": 1024, "scheduler": {"name": "null"}}],
        "domains": [
            {"name": "s", "host": "h0", "mem_mib": 64, "soft_affinity": [3], "workload": {"kind": "cpu"}},
            {"name": "h", "host": "h0", "mem_mib": 64, "workload": {"kind": "cpu"}},
        ],
    }
    res = simulate(doc)
    uid = {d["name"]: d["uid"] for d in res.summary["domains"]}
    ivs = run_ivs(res)
    assert {p for *_x, p in ivs[uid["s"] << 12]} == {3}
    assert {p for *_x, p in ivs[uid["h"] << 12]} == {1}


def test_a_waiter_is_only_given_a_pcpu_of_its_hard_affinity():
    """2 guest pCPUs (1, 2): a holds 1, c (hard affinity [1]) must wait even though pCPU 2 is
    free; b takes 2. When a is destroyed, c gets pCPU 1."""
    doc = {
        "run": {"seed": 1, "duration_ms": 600, "debug_checks": True},
        "hosts": [{"name": "h0", "pcpus": 3, "mem_mib": 1024, "scheduler": {"name": "null"}}],
        "domains": [
            {"name": "a", "host": "h0", "mem_mib": 64, "hard_affinity": [1], "workload": {"kind": "cpu"}},
            {"name": "c", "host": "h0", "mem_mib": 64, "hard_affinity": [1], "workload": {"kind": "cpu"}},
            {"name": "b", "host": "h0", "mem_mib": 64, "workload": {"kind": "cpu"}},
        ],
        "events": [{"at_ms": 300, "destroy": {"domain": "a"}}],
    }
    res = simulate(doc)
    uid = {d["name"]: d["uid"] for d in res.summary["domains"]}
    ivs = run_ivs(res)
    c = ivs[uid["c"] << 12]
    assert {p for *_x, p in c} == {1} and min(s for s, *_x in c) >= 300 * MS
    assert {p for *_x, p in ivs[uid["b"] << 12]} == {2}
