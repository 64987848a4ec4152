"""No-op events cost nothing and change nothing: a pCPU whose next events would all do
nothing in its current state (stale timer and burst entries, an s_timer entry that fires
before its deadline) reports the first event that can act as its horizon, so the master
leaves it out of rounds and holds no boundary for it; entries that can never act are
dropped from the heap. Every switch, runstate and counter stays the same as with the
raw heap top as horizon (``skip_noops`` off)."""

from __future__ import annotations

from heapq import heappop

import pytest

from cluster.backends.inline import InlineBackend
from cluster.config import build_plan, load_config

from conftest import CONFIGS


def run(path, overrides, skip: bool):
    cfg, _ = load_config(path, overrides)
    plan = build_plan(cfg)
    be = InlineBackend(plan)
    mgr = be.start()
    cores = [c for h in be.hosts.values() for c in h.cores.values()]
    for c in cores:
        c.skip_noops = c.skip_noops and skip
    try:
        mgr.setup()
        mgr.run_until(plan.duration_ns)
        boundaries = sum(h.engine.boundaries for h in be.hosts.values())
        heaps = max(len(c._heap) for c in cores)
        reports = mgr.finish()
    finally:
        be.shutdown()
    figures = [(r.host, r.pcpu, r.digest, r.busy_ns, r.idle_ns, r.switches, r.metrics, sorted(r.vcpus.items())) for rs in reports.values() for r in rs]
    return figures, boundaries, sum(r.events for rs in reports.values() for r in rs), heaps


CASES = [
    ("bench/mixed.yaml", ["run.duration_ms=400"]),  # Credit: idle pCPUs keep stale s_timer entries
    ("bench/mixed.yaml", ["run.duration_ms=200", "hosts.*.scheduler={name: credit2}"]),  # no elision (time-dependent summary)
    ("bench/small.yaml", ["run.duration_ms=400"]),
    ("bench/cpu.yaml", ["run.duration_ms=400", "hosts.*.scheduler={name: rtds}"]),
]


@pytest.mark.parametrize("name,overrides", CASES, ids=[f"{n}:{o[-1]}" for n, o in CASES])
def test_same_results_with_fewer_or_equal_events_and_boundaries(name, overrides):
    on, b_on, ev_on, heap_on = run(CONFIGS / name, overrides, True)
    off, b_off, ev_off, _ = run(CONFIGS / name, overrides, False)
    assert on == off
    assert b_on <= b_off and ev_on <= ev_off
    if "credit2" not in overrides[-1]:
        assert b_on < b_off  # boundaries held only for no-op events are gone
    assert heap_on <= 2 * 64  # dead entries are dropped (a CPU hog's burst ends 2**50 ns away)


def test_dropping_dead_entries_keeps_the_firing_order():
    cfg, _ = load_config(CONFIGS / "bench" / "mixed.yaml", ["run.duration_ms=50"])
    be = InlineBackend(build_plan(cfg))
    mgr = be.start()
    try:
        mgr.setup()
        mgr.run_until(50_000_000)
        for h in be.hosts.values():
            for c in h.cores.values():
                live = sorted(e for e in c._heap if c._live_at(e[0], e[3], e[4]) < (1 << 62) or e[3] not in (1, 3))
                c._compact()
                heap = list(c._heap)
                order = [heappop(heap) for _ in range(len(heap))]
                # what is left fires in key order, and nothing that could act was dropped
                assert order == sorted(order)
                assert set(live) <= set(order)
    finally:
        be.shutdown()
