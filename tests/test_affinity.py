"""cpupools and affinity with every scheduler: no vCPU ever runs outside its hard affinity or
its pool, as both change over the run (pin and move_pool events), checked from the run trace;
soft affinity is preferred (Xen's two-step balancing) by Credit2 and null; the same pools give
the same trace inline and on Ray."""

from __future__ import annotations

import pytest

from hosts.sched import REGISTRY

from conftest import run_ivs, simulate

MS = 1_000_000
SCHEDULERS = sorted(REGISTRY)


def px_scheduler(name: str) -> dict:
    if name == "arinc653":  # Xen's default schedule would run nobody here (no Domain-0)
        entries = [("b", 0), ("b", 1), ("c", 0), ("a", 0), ("a", 1)]
        return {"name": name, "schedule": [{"domain": d, "vcpu": i, "runtime_ms": 2} for d, i in entries]}
    return {"name": name}


def pools_doc(sched: str, seed: int = 5) -> dict:
    return {
        "run": {"seed": seed, "duration_ms": 700, "debug_checks": True},
        "hosts": [
            {
                "name": "h0",
                "pcpus": 4,
                "mem_mib": 1024,
                "pools": [
                    {"name": "Pool-0", "cpus": [0, 1], "scheduler": {"name": "credit2"}},
                    {"name": "px", "cpus": [2, 3], "scheduler": px_scheduler(sched)},
                ],
            }
        ],
        "domains": [
            {"name": "a", "host": "h0", "mem_mib": 64, "vcpus": 2, "hard_affinity": [[0, 2], [1, 3]], "soft_affinity": [1], "workload": {"kind": "cpu"}},
            {"name": "b", "host": "h0", "mem_mib": 64, "vcpus": 2, "pool": "px", "hard_affinity": [[2, 3], [3]], "workload": {"kind": "cpu"}},
            {"name": "c", "host": "h0", "mem_mib": 64, "pool": "px", "soft_affinity": [2], "workload": {"kind": "io", "think_ms": 2, "burst_us": 400}},
            {"name": "d", "host": "h0", "mem_mib": 64, "workload": {"kind": "periodic", "run_ms": 3, "period_ms": 7}},
        ],
        "events": [
            {"at_ms": 150, "pin": {"domain": "b", "vcpu": 0, "hard": [2]}},
            {"at_ms": 250, "pin": {"domain": "d", "vcpu": 0, "hard": [1], "soft": [0]}},
            {"at_ms": 350, "move_pool": {"domain": "a", "pool": "px"}},
            {"at_ms": 450, "move_pool": {"domain": "c", "pool": "Pool-0"}},
            {"at_ms": 550, "pin": {"domain": "a", "vcpu": 1, "hard": [2, 3]}},
        ],
    }


def allowed_timeline(doc: dict) -> dict[tuple[str, int], list[tuple[int, frozenset]]]:
    """(domain, vcpu) -> [(from_ns, pCPUs it may run on)], from the config and its events:
    its hard affinity within its pool (the whole pool if they do not intersect)."""
    host = doc["hosts"][0]
    pools = {p["name"]: frozenset(p["cpus"]) for p in host["pools"]}
    first = host["pools"][0]["name"]
    state: dict[tuple[str, int], list] = {}
    for d in doc["domains"]:
        aff = d.get("hard_affinity")
        for i in range(d.get("vcpus", 1)):
            hard = frozenset(aff[i] if aff and isinstance(aff[0], list) else (aff or ()))
            state[(d["name"], i)] = [hard, d.get("pool", first)]
    out = {k: [] for k in state}

    def push(t: int) -> None:
        for k, (hard, pool) in state.items():
            cpus = pools[pool]
            out[k].append((t, (hard & cpus) or cpus))

    push(0)
    for e in sorted(doc["events"], key=lambda e: e["at_ms"]):
        t = int(e["at_ms"] * MS)
        if "pin" in e:
            state[(e["pin"]["domain"], e["pin"]["vcpu"])][0] = frozenset(e["pin"]["hard"])
        elif "move_pool" in e:
            for k in state:
                if k[0] == e["move_pool"]["domain"]:
                    state[k][1] = e["move_pool"]["pool"]
        push(t)
    return out


def allowed_at(timeline: list, t: int) -> frozenset:
    cur = timeline[0][1]
    for start, cpus in timeline:
        if start <= t:
            cur = cpus
    return cur


@pytest.mark.parametrize("sched", SCHEDULERS)
def test_no_vcpu_runs_outside_its_hard_affinity_or_pool(sched):
    doc = pools_doc(sched)
    res = simulate(doc)  # debug_checks: the engine also checks at every switch
    uid = {d["name"]: d["uid"] for d in res.summary["domains"]}
    tl = allowed_timeline(doc)
    ivs = run_ivs(res)
    checked = 0
    for (name, i), timeline in tl.items():
        for s, e, p in ivs.get((uid[name] << 12) + i, []):
            assert p in allowed_at(timeline, s) and p in allowed_at(timeline, e - 1), f"{sched}: {name}.v{i} ran [{s}, {e}) on pCPU {p}"
            checked += 1
    assert checked > 50
    # the moves took effect: c ran in Pool-0 after 450 ms, a in px after 350 ms (except with
    # null, where b's two vCPUs hold both pCPUs of px for good and a waits)
    assert any(s >= 450 * MS and p in (0, 1) for s, _e, p in ivs.get(uid["c"] << 12, []))
    a_in_px = any(s >= 350 * MS and p in (2, 3) for v in (0, 1) for s, _e, p in ivs.get((uid["a"] << 12) + v, []))
    assert a_in_px == (sched != "null")


def test_credit2_prefers_an_idle_pcpu_of_the_soft_affinity():
    """3 pCPUs, one runqueue. Placement goes round the runqueue: Domain-0 on pCPU 1, the hog on
    2; without soft affinity s would go on 0. With soft affinity [1] it is placed, and woken,
    on pCPU 1 (idle, as Domain-0 idles): step one of the two-step balancing."""
    def doc(soft):
        d = {"name": "s", "host": "h0", "mem_mib": 64, "workload": {"kind": "io", "think_ms": 3, "burst_us": 500}}
        if soft:
            d["soft_affinity"] = soft
        return {
            "run": {"seed": 3, "duration_ms": 1000, "debug_checks": True},
            "hosts": [{"name": "h0", "pcpus": 3, "mem_mib": 1024, "scheduler": {"name": "credit2"}}],
            "domains": [{"name": "h", "host": "h0", "mem_mib": 64, "workload": {"kind": "cpu"}}, d],
        }

    for soft, want in (([1], 1), (None, 0)):
        res = simulate(doc(soft))
        uid = next(d["uid"] for d in res.summary["domains"] if d["name"] == "s")
        on: dict[int, int] = {}
        for s, e, p in run_ivs(res)[uid << 12]:
            on[p] = on.get(p, 0) + e - s
        assert on.get(want, 0) >= 0.95 * sum(on.values()), (soft, on)


def test_null_assigns_a_free_pcpu_of_the_soft_affinity_first():
    doc = {
        "run": {"seed": 1, "duration_ms": 300, "debug_checks": True},
        "hosts": [{"name": "h0", "pcpus": 4, "mem_mib": 1024, "scheduler": {"name": "null"}}],
        "domains": [{"name": "s", "host": "h0", "mem_mib": 64, "soft_affinity": [2, 3], "workload": {"kind": "cpu"}}],
    }
    res = simulate(doc)
    uid = next(d["uid"] for d in res.summary["domains"] if d["name"] == "s")
    assert {p for *_x, p in run_ivs(res)[uid << 12]} == {2}


@pytest.mark.ray
def test_pools_of_every_scheduler_same_trace_on_ray(ray_session):
    doc = {
        "run": {"seed": 9, "duration_ms": 300},
        "hosts": [
            {
                "name": "h0",
                "pcpus": 6,
                "mem_mib": 1024,
                "pools": [
                    {"name": "Pool-0", "cpus": [0, 1], "scheduler": {"name": "credit2"}},
                    {"name": "rt", "cpus": [2, 3], "scheduler": {"name": "rtds"}},
                    {"name": "nl", "cpus": [4], "scheduler": {"name": "null"}},
                    {"name": "ar", "cpus": [5], "scheduler": {"name": "arinc653", "schedule": [{"domain": "e", "runtime_ms": 3}]}},
                ],
            }
        ],
        "domains": [
            {"name": "a", "host": "h0", "mem_mib": 32, "vcpus": 3, "cap": 120, "workload": {"kind": "cpu"}},
            {"name": "b", "host": "h0", "mem_mib": 32, "workload": {"kind": "io", "think_ms": 1, "burst_us": 300}},
            {"name": "c", "host": "h0", "mem_mib": 32, "vcpus": 3, "pool": "rt", "workload": {"kind": "periodic", "run_ms": 2, "period_ms": 5}},
            {"name": "d", "host": "h0", "mem_mib": 32, "pool": "nl", "workload": {"kind": "cpu"}},
            {"name": "e", "host": "h0", "mem_mib": 32, "pool": "ar", "workload": {"kind": "cpu"}},
        ],
        "events": [{"at_ms": 150, "move_pool": {"domain": "b", "pool": "rt"}}],
    }
    inline = simulate(doc)
    ray = simulate(doc, backend="ray")
    assert ray.summary["trace_digest"] == inline.summary["trace_digest"]
