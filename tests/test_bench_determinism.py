"""Every benchmark scenario gives the same trace digest and figures inline and on Ray (short
runs): the fast Ray backend keeps the determinism contract."""

from __future__ import annotations

import importlib.util

import pytest

from cluster.config import load_config

from conftest import CONFIGS, simulate_file

# the scenarios exactly as scripts/bench.py runs them (files and variants)
_spec = importlib.util.spec_from_file_location("hvsim_bench", CONFIGS.parent / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def shortened(path, sets: list[str]) -> list[str]:
    cfg, _ = load_config(path, sets)
    if cfg.events:  # keep the scenario's events (the migration) inside a short run
        first = min(e.at_ms for e in cfg.events)
        return sets + [f"run.duration_ms={first + 400}"]
    return sets + ["run.duration_ms=400"]


@pytest.mark.ray
@pytest.mark.parametrize("name", bench.scenario_names())
def test_bench_scenario_same_digest_inline_and_ray(ray_session, name):
    path, sets = bench.resolve(name)
    over = shortened(path, sets)
    a = simulate_file(path, overrides=over).summary
    b = simulate_file(path, backend="ray", overrides=over).summary
    assert a["trace_digest"] == b["trace_digest"]
    assert [(p["busy_ns"], p["idle_ns"]) for p in a["pcpus"]] == [(p["busy_ns"], p["idle_ns"]) for p in b["pcpus"]]
    assert a["scheduler_events"] == b["scheduler_events"] > 0
    assert [(m["pages_sent"], m["status"]) for m in a.get("migrations", [])] == [(m["pages_sent"], m["status"]) for m in b.get("migrations", [])]


@pytest.mark.parametrize("rounds", [0, 1])
def test_fewer_micro_rounds_stays_deterministic_and_close(rounds):
    """Folding what a delivery causes into the next epoch is a (documented) fidelity trade:
    runs stay deterministic and CPU shares move little."""
    q = CONFIGS / "quickstart.yaml"
    base = simulate_file(q, overrides=["run.duration_ms=2000"]).summary
    a = simulate_file(q, overrides=["run.duration_ms=2000", f"run.boundary_rounds={rounds}"]).summary
    b = simulate_file(q, overrides=["run.duration_ms=2000", f"run.boundary_rounds={rounds}"]).summary
    assert a["trace_digest"] == b["trace_digest"]
    for da, d0 in zip(a["domains"], base["domains"]):
        assert abs(da["cpu_pct"] - d0["cpu_pct"]) < 8.0
