"""Shared fixtures: a real local Ray started once per session, and quick in-process runs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cluster.config import load_config, validate_doc, resolved_doc
from cluster.runner import run_loaded

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole session (ray.init costs ~4 s), with 2 CPUs."""
    import ray

    from cluster.raysession import RaySession

    s = RaySession(num_cpus=2).start()
    assert ray.is_initialized()
    yield s
    s.close()


def simulate(doc: dict, backend: str = "inline", **kw):
    """Validate a config document and run it without writing a run directory."""
    cfg = validate_doc(doc, "<test>")
    return run_loaded(cfg, resolved_doc(cfg), backend=backend, write=False, **kw)


def simulate_file(path, backend: str = "inline", overrides=None, **kw):
    cfg, resolved = load_config(path, overrides or [])
    return run_loaded(cfg, resolved, backend=backend, write=False, **kw)


def cpu_pct(summary: dict) -> dict[str, float]:
    return {d["name"]: d["cpu_pct"] for d in summary["domains"] if not d["dom0"]}


def run_ivs(res, host: str = "h0") -> dict[int, list]:
    """vid -> [(start_ns, end_ns, pcpu)] from a run's trace (the intervals each vCPU ran)."""
    out: dict[int, list] = {}
    for r in res.reports[host]:
        tr = np.frombuffer(r.trace, dtype=np.int64).reshape(-1, 3)
        for s, e, v in tr.tolist():
            out.setdefault(v, []).append((s, e, r.pcpu))
    return out
