"""Every file in configs/ validates and runs (short duration override)."""

from __future__ import annotations

import pytest

from cluster.config import load_config

from conftest import CONFIGS, simulate_file

RUN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if "sweeps" not in p.parts)


def test_there_are_configs():
    assert (CONFIGS / "quickstart.yaml") in RUN_CONFIGS


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=[str(p.relative_to(CONFIGS)) for p in RUN_CONFIGS])
def test_config_validates_and_runs(path):
    cfg, _ = load_config(path)
    short = min(cfg.run.duration_ms, 300.0)
    overrides = [f"run.duration_ms={short}"]
    # keep timed events inside the shortened run
    for i, e in enumerate(cfg.events):
        if e.at_ms > short:
            overrides.append(f"events.{i}.at_ms={short * (i + 1) / (len(cfg.events) + 1):.3f}")
    res = simulate_file(path, overrides=overrides)
    s = res.summary
    assert s["sim_time_ns"] == int(short * 1e6)
    for p in s["pcpus"]:
        assert p["busy_ns"] + p["idle_ns"] == s["sim_time_ns"]
