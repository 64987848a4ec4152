"""RTDS: reservations (period, budget), extratime, and deadlines under (global) EDF.

Expected numbers come from Xen's docs (docs/features/sched_rtds.pandoc: the 100 ms / 50 ms
burner) and from real-time theory (EDF on one processor meets every deadline when the
utilisation is at most 1; global EDF on m processors when U <= m - (m - 1) u_max), checked
period by period from the run trace.
"""

from __future__ import annotations

import pytest

from cluster.config import ConfigError

from conftest import CONFIGS, cpu_pct, run_ivs, simulate, simulate_file

VAL = CONFIGS / "validation"
MS = 1_000_000


def deadline_misses(res, doc_domains) -> dict[str, int]:
    """For each CPU-bound vCPU with extratime off: the periods [kP, (k+1)P) in which it ran
    less than its budget (its deadline, the end of the period, was missed)."""
    ivs = run_ivs(res)
    uids = {d["name"]: d["uid"] for d in res.summary["domains"]}
    T = res.summary["sim_time_ns"]
    out = {}
    for d in doc_domains:
        P = d["sched"]["period_us"] * 1000
        B = d["sched"]["budget_us"] * 1000
        runs = ivs.get(uids[d["name"]] << 12, [])
        missed = 0
        for k in range(T // P):
            lo, hi = k * P, (k + 1) * P
            got = sum(max(0, min(e, hi) - max(s, lo)) for s, e, _p in runs)
            assert got <= B, f"{d['name']} ran {got} ns > its budget in period {k} (extratime is off)"
            missed += got < B
        out[d["name"]] = missed
    return out


def test_burner_without_extratime_gets_at_most_its_reservation():
    got = cpu_pct(simulate_file(VAL / "rtds-extratime-off.yaml").summary)["burner"]
    assert got <= 50.0 + 1e-9
    assert got >= 49.0  # and it does get it


def test_burner_with_extratime_uses_the_idle_pcpu():
    got = cpu_pct(simulate_file(VAL / "rtds-extratime-on.yaml").summary)["burner"]
    assert got > 50.0
    assert got >= 95.0  # Domain-0 is idle: nearly the whole pCPU


@pytest.mark.parametrize("name", ["rtds-deadlines.yaml", "rtds-deadlines-global.yaml"])
def test_every_deadline_is_met_when_the_utilisation_fits(name):
    import yaml

    doc = yaml.safe_load((VAL / name).read_text())
    res = simulate_file(VAL / name)
    misses = deadline_misses(res, doc["domains"])
    assert misses == {d["name"]: 0 for d in doc["domains"]}
    util = sum(d["sched"]["budget_us"] / d["sched"]["period_us"] for d in doc["domains"])
    assert util <= doc["hosts"][0]["pcpus"]


def test_extratime_runs_behind_every_reservation():
    """a (10 ms / 5 ms, extratime) and b (10 ms / 3 ms, no extratime), both CPU-bound on 1 pCPU:
    b always gets its 3 ms (a's extra time is at priority level 1, behind b), a gets its 5 ms
    and the 2 ms nobody reserved: 70 / 30 %."""
    doc = {
        "run": {"seed": 1, "duration_ms": 2000, "debug_checks": True},
        "hosts": [{"name": "h0", "pcpus": 1, "mem_mib": 1024, "scheduler": {"name": "rtds"}}],
        "domains": [
            {"name": "a", "host": "h0", "mem_mib": 64, "workload": {"kind": "cpu"}, "sched": {"period_us": 10000, "budget_us": 5000}},
            {"name": "b", "host": "h0", "mem_mib": 64, "workload": {"kind": "cpu"}, "sched": {"period_us": 10000, "budget_us": 3000, "extratime": False}},
        ],
    }
    res = simulate(doc)
    got = cpu_pct(res.summary)
    assert abs(got["a"] - 70.0) <= 0.5 and abs(got["b"] - 30.0) <= 0.5
    assert deadline_misses(res, doc["domains"][1:]) == {"b": 0}


def test_defaults_are_xens():
    """No sched params: 10 ms / 4 ms with extratime; two hogs share the pCPU equally."""
    doc = {
        "run": {"seed": 1, "duration_ms": 1000, "debug_checks": True},
        "hosts": [{"name": "h0", "pcpus": 1, "mem_mib": 1024, "scheduler": {"name": "rtds"}}],
        "domains": [{"name": n, "host": "h0", "mem_mib": 64, "workload": {"kind": "cpu"}} for n in ("a", "b")],
    }
    got = cpu_pct(simulate(doc).summary)
    assert abs(got["a"] - 50.0) <= 1.0 and abs(got["b"] - 50.0) <= 1.0


@pytest.mark.parametrize(
    "sched, match",
    [
        ({"period_us": 10000, "budget_us": 20000}, "exceeds period_us"),
        ({"period_us": 5, "budget_us": 5}, "period_us"),
        ({"period_us": 1000, "budget_us": 5}, "budget_us"),
        ({"period_us": 1000, "slice_us": 5}, "allowed keys: period_us, budget_us, extratime"),
    ],
)
def test_bad_vcpu_parameters_are_config_errors(sched, match):
    doc = {
        "hosts": [{"name": "h0", "pcpus": 1, "scheduler": {"name": "rtds"}}],
        "domains": [{"name": "a", "host": "h0", "mem_mib": 64, "sched": sched}],
    }
    with pytest.raises(ConfigError, match=match):
        simulate(doc)


def test_vcpu_parameters_need_an_rtds_pool():
    doc = {
        "hosts": [{"name": "h0", "pcpus": 1, "scheduler": {"name": "credit2"}}],
        "domains": [{"name": "a", "host": "h0", "mem_mib": 64, "sched": {"period_us": 1000, "budget_us": 500}}],
    }
    with pytest.raises(ConfigError, match="no per-domain parameters"):
        simulate(doc)
