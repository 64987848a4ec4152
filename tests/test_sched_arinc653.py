"""ARINC653: each partition runs exactly inside its minor frames of the major frame (checked
from the run trace); Xen's default schedule runs only Domain-0; the schedule is validated."""

from __future__ import annotations

import pytest

from cluster.config import ConfigError

from conftest import CONFIGS, cpu_pct, run_ivs, simulate, simulate_file

VAL = CONFIGS / "validation"
MS = 1_000_000


def test_partitions_run_exactly_inside_their_minor_frames():
    res = simulate_file(VAL / "arinc653-frames.yaml")
    uid = {d["name"]: d["uid"] for d in res.summary["domains"]}
    ivs = run_ivs(res)
    major = 12 * MS
    frames = {"Domain-0": (0, 2 * MS), "p1": (2 * MS, 5 * MS), "p2": (5 * MS, 9 * MS)}
    T = res.summary["sim_time_ns"]
    for name, (lo, hi) in frames.items():
        for s, e, _p in ivs.get(uid[name] << 12, []):
            k = s // major
            assert k * major + lo <= s and e <= k * major + hi, f"{name} ran [{s}, {e}) outside its frame"
    # a CPU-bound partition fills every one of its frames: exactly its runtime per major frame
    for name in ("p1", "p2"):
        lo, hi = frames[name]
        per_frame: dict[int, int] = {}
        for s, e, _p in ivs[uid[name] << 12]:
            per_frame[s // major] = per_frame.get(s // major, 0) + e - s
        assert per_frame == {k: hi - lo for k in range(T // major)}
    got = cpu_pct(res.summary)
    assert got["p1"] == 25.0 and abs(got["p2"] - 100 / 3) < 1e-3
    # the 3 ms after the last minor frame are idle
    p = res.summary["pcpus"][0]
    assert p["idle_ns"] >= T // major * 3 * MS


def test_default_schedule_runs_only_domain0():
    doc = {
        "run": {"seed": 1, "duration_ms": 300, "debug_checks": True},
        "hosts": [{"name": "h0", "pcpus": 1, "mem_mib": 1024, "scheduler": {"name": "arinc653"}}],
        "domains": [{"name": "g", "host": "h0", "mem_mib": 64, "workload": {"kind": "cpu"}}],
    }
    assert cpu_pct(simulate(doc).summary)["g"] == 0.0


def test_same_schedule_on_every_pcpu_and_no_migration():
    """2 pCPUs: a's vCPU 0 sits on pCPU 0 and vCPU 1 on pCPU 1 (initial placement); both
    entries' frames follow each other on both pCPUs, so each vCPU runs only in its own frame,
    only on its own pCPU."""
    doc = {
        "run": {"seed": 1, "duration_ms": 400, "debug_checks": True},
        "hosts": [
            {
                "name": "h0",
                "pcpus": 2,
                "mem_mib": 1024,
                "scheduler": {"name": "arinc653", "schedule": [{"domain": "a", "vcpu": 0, "runtime_ms": 5}, {"domain": "a", "vcpu": 1, "runtime_ms": 5}]},
            }
        ],
        "domains": [{"name": "a", "host": "h0", "mem_mib": 64, "vcpus": 2, "workload": {"kind": "cpu"}}],
    }
    res = simulate(doc)
    uid = next(d["uid"] for d in res.summary["domains"] if d["name"] == "a")
    ivs = run_ivs(res)
    for i in (0, 1):
        runs = ivs[(uid << 12) + i]
        assert {p for *_x, p in runs} == {i}
        for s, e, _p in runs:
            k = s // (10 * MS)
            assert k * 10 * MS + i * 5 * MS <= s and e <= k * 10 * MS + (i + 1) * 5 * MS
    assert cpu_pct(res.summary)["a"] == 100.0  # 50 % of each pCPU


@pytest.mark.parametrize(
    "sched, match",
    [
        ({"name": "arinc653", "major_frame_ms": 5, "schedule": [{"domain": "a", "runtime_ms": 6}]}, "shorter than the sum"),
        ({"name": "arinc653", "major_frame_ms": 5}, "needs a schedule"),
        ({"name": "arinc653", "schedule": [{"domain": "a", "runtime_ms": 1}] * 65}, "64"),
        ({"name": "arinc653", "schedule": [{"domain": "a", "runtime_ms": 0}]}, "runtime_ms"),
        ({"name": "arinc653", "schedule": [{"domain": "a", "runtime_ms": 1, "cpu": 0}]}, "cpu"),
    ],
)
def test_bad_schedules_are_config_errors(sched, match):
    doc = {"hosts": [{"name": "h0", "pcpus": 1, "scheduler": sched}]}
    with pytest.raises(ConfigError, match=match):
        simulate(doc)
