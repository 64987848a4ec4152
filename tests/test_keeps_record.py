"""A vCPU moving between pCPUs of one process keeps its unit record (schedulers with
``keeps_record``) instead of going through its dict: the same results as the codec path.

With ``run.debug_checks`` every moving vCPU goes through its msgpack record (``hosts.codec``),
unit record included; without, Credit and Credit2 hand the record object over (``restored()``
called, as ``from_wire`` does). Both must give the same trace.
"""

from __future__ import annotations

import copy

import pytest

from hosts.sched.credit.records import CreditVcpu
from hosts.sched.credit2.records import Credit2Unit

from conftest import simulate


def doc_for(sched: str, checks: bool) -> dict:
    return {
        "run": {"seed": 4, "duration_ms": 400, "debug_checks": checks},
        "hosts": [{"name": "h0", "pcpus": 4, "mem_mib": 1024, "scheduler": {"name": sched}}],
        "domains": [
            {"name": "hog", "host": "h0", "vcpus": 4, "mem_mib": 16, "weight": 512, "workload": {"kind": "cpu"}},
            {"name": "io", "host": "h0", "vcpus": 3, "mem_mib": 16, "workload": {"kind": "io", "think_ms": 1, "burst_us": 200}},
            {"name": "per", "host": "h0", "vcpus": 2, "mem_mib": 16, "cap": 60, "workload": {"kind": "periodic", "run_ms": 2, "period_ms": 5}},
        ],
    }


@pytest.mark.parametrize("sched", ["credit", "credit2"])
def test_handing_the_record_over_equals_the_codec_path(sched):
    kept = simulate(doc_for(sched, checks=False)).summary
    coded = simulate(doc_for(sched, checks=True)).summary
    assert kept["trace_digest"] == coded["trace_digest"]


@pytest.mark.parametrize("cls", [CreditVcpu, Credit2Unit])
def test_a_kept_record_has_the_fields_from_wire_gives(cls):
    u = cls()
    for i, f in enumerate(cls.FIELDS):
        v = getattr(u, f)
        setattr(u, f, (not v) if isinstance(v, bool) else (i + 7) if isinstance(v, int) or v is None else v)
    kept = copy.copy(u)
    kept.restored()
    rebuilt = cls.from_wire(u.to_wire())
    assert kept.to_wire() == rebuilt.to_wire()
