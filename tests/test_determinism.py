"""Determinism: same config + seed -> same trace digest and metrics, whatever the backend,
the chunking of the run, or the skipping of quiet epochs."""

from __future__ import annotations

import pytest

from conftest import CONFIGS, simulate_file

QS = CONFIGS / "quickstart.yaml"
SHORT = ["run.duration_ms=1500"]


def runstates(summary: dict) -> dict:
    return {(d["host"], d["name"], v["id"]): (v["running_ns"], v["runnable_ns"], v["blocked_ns"], v["offline_ns"]) for d in summary["domains"] for v in d["vcpus"]}


def test_same_seed_same_digest_inline():
    a = simulate_file(QS, overrides=SHORT)
    b = simulate_file(QS, overrides=SHORT)
    assert a.summary["trace_digest"] == b.summary["trace_digest"]
    assert runstates(a.summary) == runstates(b.summary)


def test_other_seed_other_digest():
    a = simulate_file(QS, overrides=SHORT)
    b = simulate_file(QS, overrides=SHORT + ["run.seed=43"])
    assert a.summary["trace_digest"] != b.summary["trace_digest"]


def test_skipping_quiet_epochs_changes_nothing():
    a = simulate_file(QS, overrides=SHORT + ["run.skip_quiet_epochs=true"])
    b = simulate_file(QS, overrides=SHORT + ["run.skip_quiet_epochs=false"])
    assert a.summary["trace_digest"] == b.summary["trace_digest"]
    assert runstates(a.summary) == runstates(b.summary)


def _inline_manager(path=QS, overrides=SHORT, doc=None):
    """A plan, inline backend and set-up domain manager, to drive by hand (the quickstart's
    unless a config file or document is given)."""
    from cluster.backends.inline import InlineBackend
    from cluster.config import build_plan, load_config, validate_doc

    cfg = validate_doc(doc, "<test>") if doc is not None else load_config(path, overrides)[0]
    plan = build_plan(cfg)
    be = InlineBackend(plan)
    mgr = be.start()
    mgr.setup()
    return plan, be, mgr


def _reports_paused_every(step_ns: int, probe: bool = False, **which) -> list:
    """Run inline, stopping every host every ``step_ns`` (the manager's pauses) and, with
    ``probe``, reading every host's usage and every domain's counters there (what the control
    loop and migrations read); ``which`` as for ``_inline_manager`` (default: the quickstart)."""
    plan, be, mgr = _inline_manager(**which)
    t = 0
    while t < plan.duration_ns:
        t = min(plan.duration_ns, t + step_ns)
        mgr.run_until(t)
        if probe:
            for h, client in mgr.hosts.items():
                assert len(mgr.ask(h, client.usage()).busy_ns) == plan.hosts[h].nr_pcpus
            for uid in mgr.where:
                mgr.domain_counters(uid)
    reports = be.reports(mgr.finish(), set())
    be.shutdown()
    return [(r.host, r.pcpu, r.digest, r.busy_ns, r.events, sorted(r.vcpus.items())) for rs in reports.values() for r in rs]


def test_runs_are_repeatable_with_migrations_and_a_control_loop():
    """A cluster run (trace-driven guests, consolidation by live migration, power) gives the
    same digest twice: the driver's wall-time-sized pauses must not reach the results."""
    cfg = CONFIGS / "cluster" / "consolidation-16.yaml"
    over = ["run.duration_ms=1500", "run.control_period_ms=100"]
    a = simulate_file(cfg, overrides=over)
    b = simulate_file(cfg, overrides=over)
    assert len(a.summary["migrations"]) > 0
    assert a.summary["trace_digest"] == b.summary["trace_digest"]


def test_pause_points_change_nothing():
    one_go = _reports_paused_every(1 << 62)
    assert _reports_paused_every(7_300_001) == one_go  # off the epoch grid
    assert _reports_paused_every(100_000_000) == one_go  # on it


#: eight periodic guests on two Credit2 pCPUs: a pause between grid points used to refresh the
#: master's view of the pCPUs (their next events, their summaries), so a later boundary that a
#: run in one go holds (and whose pool view, which Credit2's summaries make time-dependent,
#: reaches the pCPUs) was skipped: pCPU 0 switched at 409.47 ms in one go, at 410 ms paused
CREDIT2_PERIODIC = {
    "run": {"seed": 16, "duration_ms": 2000},
    "hosts": [{"name": "h", "pcpus": 2, "mem_mib": 1024, "scheduler": {"name": "credit2"}}],
    "domains": [{"name": f"g{i}", "host": "h", "mem_mib": 64, "workload": {"kind": "periodic", "run_ms": 2, "period_ms": 10}} for i in range(8)],
}


def test_pause_points_change_nothing_where_views_change_with_time():
    one_go = _reports_paused_every(1 << 62, doc=CREDIT2_PERIODIC)
    assert _reports_paused_every(7_300_001, doc=CREDIT2_PERIODIC) == one_go
    assert _reports_paused_every(3_333_333, doc=CREDIT2_PERIODIC) == one_go
    # reading usage and counters between boundaries is a pause too: it changes nothing
    assert _reports_paused_every(7_300_001, probe=True, doc=CREDIT2_PERIODIC) == one_go


@pytest.mark.slow
def test_pause_points_change_nothing_in_a_cluster_with_migrations():
    """The 16-host example (trace-driven guests, consolidation by live migration, power):
    27 of its 64 pCPUs ended differently when paused off the grid before the fix."""
    which = {"path": CONFIGS / "cluster" / "consolidation-16.yaml", "overrides": ["run.duration_ms=2000"]}
    one_go = _reports_paused_every(1 << 62, **which)
    assert _reports_paused_every(7_300_001, **which) == one_go


@pytest.mark.ray
def test_quickstart_inline_equals_ray(ray_session):
    a = simulate_file(QS, overrides=SHORT)
    b = simulate_file(QS, backend="ray", overrides=SHORT)
    assert b.summary["backend"] == "ray"
    # whatever grouping auto chose on this machine, each host's pCPUs are split among processes
    assert {h: sorted(c for g in gs for c in g) for h, gs in b.summary["pcpu_processes"].items()} == {"host0": [0, 1], "host1": [0, 1]}
    assert a.summary["trace_digest"] == b.summary["trace_digest"]
    assert runstates(a.summary) == runstates(b.summary)
    assert [(p["busy_ns"], p["idle_ns"]) for p in a.summary["pcpus"]] == [(p["busy_ns"], p["idle_ns"]) for p in b.summary["pcpus"]]


def test_driver_pauses_grow_from_a_small_first_step_to_the_end():
    """The driver's pauses (cluster.runner._drive) are sized by wall time; whatever the
    machine's speed they start small, grow at most 4x a step and end exactly at the end."""
    from cluster.runner import _drive

    plan, _be, mgr = _inline_manager()
    stops: list[int] = []
    inner = mgr.run_until
    mgr.run_until = lambda t: (stops.append(t), inner(t))[1]  # type: ignore[method-assign]
    seen: list[tuple[int, int]] = []
    _drive(mgr, plan, lambda t, end: seen.append((t, end)))
    epoch = plan.hosts["host0"].epoch_ns
    assert stops[0] == -(-max(plan.duration_ns // 200, 1_000_000) // epoch) * epoch
    assert stops[-1] == plan.duration_ns and stops == sorted(set(stops))
    assert all(t % epoch == 0 for t in stops[:-1])  # on the epoch grid, whatever the wall time
    steps = [b - a for a, b in zip([0] + stops, stops)]
    assert all(b <= 4 * a + epoch for a, b in zip(steps, steps[1:-1]))  # the last may be cut short
    assert seen == [(t, plan.duration_ns) for t in stops]
