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


def test_control_period_is_only_a_pause_point():
    a = simulate_file(QS, overrides=SHORT + ["run.control_period_ms=100"])
    b = simulate_file(QS, overrides=SHORT + ["run.control_period_ms=7.3"])
    assert a.summary["trace_digest"] == b.summary["trace_digest"]
    assert runstates(a.summary) == runstates(b.summary)


@pytest.mark.ray
def test_quickstart_inline_equals_ray(ray_session):
    a = simulate_file(QS, overrides=SHORT)
    b = simulate_file(QS, backend="ray", overrides=SHORT)
    assert b.summary["backend"] == "ray"
    assert a.summary["trace_digest"] == b.summary["trace_digest"]
    assert runstates(a.summary) == runstates(b.summary)
    assert [(p["busy_ns"], p["idle_ns"]) for p in a.summary["pcpus"]] == [(p["busy_ns"], p["idle_ns"]) for p in b.summary["pcpus"]]
