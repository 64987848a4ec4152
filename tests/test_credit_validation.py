"""Credit's published shares (the project's validation reference, Schedulers: cases A-F and
work conservation).

Expected numbers are the reference's, each a % of one pCPU, averaged over >= 3 simulated
seconds, tolerance +/- 2 points; each follows from Credit's weight and cap arithmetic.
"""

from __future__ import annotations

import pytest

from conftest import CONFIGS, cpu_pct, simulate_file

TOL = 2.0

CASES = {
    "credit-case-a.yaml": {"d1": 33.3, "d2": 66.7},
    "credit-case-b.yaml": {"d1": 25.0, "d2": 25.0, "d3": 50.0},
    "credit-case-c.yaml": {"d1": 40.0, "d2": 40.0, "d3": 20.0},
    "credit-case-d.yaml": {"d1": 50.0},
    "credit-case-f.yaml": {"dA": 100.0, "dB": 300.0},
    "credit-work-conserving.yaml": {"d1": 66.7, "d2": 66.7, "d3": 66.7},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_credit_shares_inline(name):
    res = simulate_file(CONFIGS / "validation" / name)
    got = cpu_pct(res.summary)
    assert res.summary["sim_time_ns"] >= 3_000_000_000
    for dom, want in CASES[name].items():
        assert abs(got[dom] - want) <= TOL, f"{name}: {dom} got {got[dom]:.2f} %, expected {want} +/- {TOL}"


def test_case_d_pcpu_idles_the_other_half():
    res = simulate_file(CONFIGS / "validation" / "credit-case-d.yaml")
    p = res.summary["pcpus"][0]
    idle_pct = 100.0 * p["idle_ns"] / (p["busy_ns"] + p["idle_ns"])
    assert abs(idle_pct - 50.0) <= TOL


def test_case_f_single_vcpu_domain_cannot_exceed_one_pcpu():
    res = simulate_file(CONFIGS / "validation" / "credit-case-f.yaml")
    dA = next(d for d in res.summary["domains"] if d["name"] == "dA")
    # weight 1024 vs 4 x 256 would entitle dA to half the host (200 %), but it has one vCPU
    assert dA["cpu_pct"] <= 100.0 + 1e-9


@pytest.mark.ray
def test_credit_case_b_on_ray(ray_session):
    res = simulate_file(CONFIGS / "validation" / "credit-case-b.yaml", backend="ray")
    got = cpu_pct(res.summary)
    for dom, want in CASES["credit-case-b.yaml"].items():
        assert abs(got[dom] - want) <= TOL
    inline = simulate_file(CONFIGS / "validation" / "credit-case-b.yaml")
    assert res.summary["trace_digest"] == inline.summary["trace_digest"]
