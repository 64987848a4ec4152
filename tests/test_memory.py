"""Host memory: frames, owners, p2m, log-dirty; guest writes; really shared across pCPU actors."""

from __future__ import annotations

import numpy as np
import pytest

from hosts.domain import DomainInfo
from hosts.memory import FREE, HostMemory, MemoryError_

from conftest import simulate
from test_hypercalls import Kept


def dom(uid, pages, max_pages=None, name=None):
    return DomainInfo(uid=uid, name=name or f"d{uid}", nr_vcpus=1, mem_pages=pages, max_pages=max_pages or pages)


@pytest.mark.parametrize("full", [False, True])
def test_frames_allocated_at_creation_and_freed_at_destruction(full):
    m = HostMemory.inline(1000, full=full)
    a, b = dom(1, 300), dom(2, 500)
    m.create_domain(a)
    m.create_domain(b)
    assert m.domain_frames(1) == 300 and m.domain_frames(2) == 500 and m.free_frames() == 200
    assert len(set(m.p2m[a.p2m_off : a.p2m_off + 300]) | set(m.p2m[b.p2m_off : b.p2m_off + 500])) == 800  # no frame shared
    m.write_tags(a, np.arange(300), np.arange(300, dtype=np.uint64) + 1)
    assert np.array_equal(m.read_tags(a, np.arange(300)), np.arange(300) + 1)
    assert m.destroy_domain(a) == 300
    assert m.free_frames() == 500 and m.domain_frames(1) == 0
    before_b = m.read_tags(b, np.arange(500)).copy()
    c = dom(3, 500)
    moved = m.create_domain(c, domains={2: b})  # a's frames, zeroed; b's p2m compacted to the front
    assert moved == [2] and b.p2m_off == 0
    assert (m.read_tags(c, np.arange(500)) == 0).all()
    assert np.array_equal(m.read_tags(b, np.arange(500)), before_b)
    if full:
        assert m.content.shape == (1000, 4096)


def test_domain_that_does_not_fit_is_refused_clearly():
    m = HostMemory.inline(1000)
    m.create_domain(dom(1, 900))
    with pytest.raises(MemoryError_, match=r"domain 'big' needs 200 pages .* but the host has 100 free"):
        m.create_domain(dom(2, 200, name="big"))
    assert m.domain_frames(2) == 0 and m.free_frames() == 100  # nothing half-done


def test_log_dirty_enable_peek_clean():
    m = HostMemory.inline(100)
    d = dom(1, 50)
    m.create_domain(d)
    m.write_tags(d, np.array([1, 2]), 7)
    assert m.peek_dirty(d).size == 0  # not tracking yet
    m.enable_log_dirty(d)
    m.write_tags(d, np.array([3, 9, 3]), 8)
    assert list(m.peek_dirty(d)) == [3, 9]
    assert list(m.peek_dirty(d)) == [3, 9]  # peek does not clear
    assert list(m.clean_dirty(d)) == [3, 9]
    assert m.peek_dirty(d).size == 0
    m.write_tags(d, np.array([4]), 9)
    assert list(m.clean_dirty(d)) == [4]
    m.disable_log_dirty(d)
    m.write_tags(d, np.array([5]), 9)
    assert m.peek_dirty(d).size == 0


def test_memwrite_dirties_pages_at_the_configured_rate():
    rate_mb_s = 40.0
    doc = {
        "run": {"seed": 3, "duration_ms": 1000},
        "hosts": [{"name": "h0", "pcpus": 1, "mem_mib": 1024}],
        "domains": [{"name": "w", "host": "h0", "mem_mib": 256, "workload": {"kind": "memwrite", "dirty_mb_s": rate_mb_s}}],
    }
    w = next(d for d in simulate(doc).summary["domains"] if d["name"] == "w")
    cpu_s = w["vcpus"][0]["running_ns"] / 1e9
    expected = rate_mb_s * 1e6 / 4096 * cpu_s
    assert w["pages_written"] == pytest.approx(expected, rel=0.01)


def test_log_dirty_slows_the_guest_more_under_shadow_than_hap():
    doc = {
        "run": {"seed": 3, "duration_ms": 400},
        "hosts": [{"name": "h0", "pcpus": 2, "mem_mib": 2048}],
        "domains": [
            {"name": m, "host": "h0", "paging": m, "mem_mib": 256, "hard_affinity": [i], "workload": {"kind": "memwrite", "dirty_mb_s": 200}}
            for i, m in enumerate(["hvm-shadow", "hvm-hap"])
        ],
    }
    k = Kept(doc)
    try:
        for name in ("hvm-shadow", "hvm-hap"):
            k.host.engine.enable_log_dirty(k.dom(name).uid)
        k.mgr.run_until(100_000_000)
        dirty = {n: np.frombuffer(k.host.engine.dirty_clean(k.dom(n).uid), dtype=np.int64) for n in ("hvm-shadow", "hvm-hap")}
        k.mgr.run_until(200_000_000)
        cores = k.host.cores.values()
        ovh = {n: sum(c.books.metrics.get(f"paging.{k.dom(n).uid}.logdirty_ns", 0) for c in cores) for n in ("hvm-shadow", "hvm-hap")}
        faults = {n: sum(c.books.metrics.get(f"paging.{k.dom(n).uid}.logdirty_faults", 0) for c in cores) for n in ("hvm-shadow", "hvm-hap")}
        written = {n: sum(c.books.metrics.get(f"pages_written.{k.dom(n).uid}", 0) for c in cores) for n in ("hvm-shadow", "hvm-hap")}
    finally:
        k.close()
    for n in dirty:
        assert dirty[n].size > 1000
        assert faults[n] >= dirty[n].size  # every page dirtied in a round faulted at least once
        assert faults[n] <= written[n]
    # per fault, shadow (write fault + shadow rebuild after each CLEAN) costs more than HAP
    assert ovh["hvm-shadow"] / faults["hvm-shadow"] > ovh["hvm-hap"] / faults["hvm-hap"]


def pingpong_doc():
    return {
        "run": {"seed": 6, "duration_ms": 300, "debug_checks": True},
        "hosts": [{"name": "h0", "pcpus": 2, "mem_mib": 512}],
        "domains": [{"name": "pp", "host": "h0", "vcpus": 2, "mem_mib": 16, "hard_affinity": [[0], [1]], "workload": {"kind": "pingpong"}}],
    }


def pingpong_counts(res):
    uid = next(d["uid"] for d in res.summary["domains"] if d["name"] == "pp")
    out = {}
    for r in res.reports["h0"]:
        for vid, info in r.vcpus.items():
            if vid >> 12 == uid:
                out[vid & 0xFFF] = (r.pcpu, info.wl["ok"], info.wl["bad"])
    return out


def test_pingpong_inline():
    c = pingpong_counts(simulate(pingpong_doc()))
    assert c[0][0] == 0 and c[1][0] == 1
    assert c[0][1] > 100 and c[0][2] == 0 and c[1][2] == 0


@pytest.mark.ray
def test_memory_is_really_shared_between_pcpu_actors(ray_session):
    """vCPU 0 (pCPU actor 0) and vCPU 1 (pCPU actor 1, another process) pass values through
    guest pages: every value read is the one the other vCPU wrote."""
    res = simulate(pingpong_doc(), backend="ray")
    c = pingpong_counts(res)
    assert c[0][0] == 0 and c[1][0] == 1  # two different pCPU actors
    assert c[0][1] > 100 and c[0][2] == 0 and c[1][2] == 0
