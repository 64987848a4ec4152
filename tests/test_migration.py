"""Live migration (validation.md, Live migration): stop rules, timing, sharing, nothing lost,
faults, and the same figures on both backends."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cluster.config import MigrationCfg
from cluster.migration import DowntimeTargetPolicy, RoundStats, XenLegacyPolicy, XenPolicy
from hosts.vcpu import make_vid

from conftest import simulate
from test_hypercalls import Kept

GIB = 1 << 30
ONE_GBIT = 1e9


def two_hosts(domains, events, duration_ms, mem_mib=2048, links=None, **run):
    return {
        "run": {"seed": 1, "duration_ms": duration_ms, **run},
        "hosts": [{"name": "host0", "pcpus": 2, "mem_mib": mem_mib}, {"name": "host1", "pcpus": 2, "mem_mib": mem_mib}],
        "links": links if links is not None else [{"a": "host0", "b": "host1", "bandwidth_mbit_s": 1000, "latency_us": 100}],
        "domains": domains,
        "events": events,
    }


def idle(name, mem_mib):
    return {"name": name, "host": "host0", "mem_mib": mem_mib, "workload": {"kind": "idle"}}


def migrate(name, at_ms=1000, policy="xen", **kw):
    return {"at_ms": at_ms, "migrate": {"domain": name, "to": "host1", "policy": policy, **kw}}


def mig(summary, name=None):
    ms = summary["migrations"]
    return ms[0] if name is None else next(m for m in ms if m["domain"] == name)


# --- stop rules, exactly (the policies driven with scripted dirty counts) -----------------------


def drive(policy_cls, dirty, sent=None, skipped=None, p2m=100_000, params=None, durations=None):
    """Feed a policy the round-by-round figures; return (live rounds, CLEANs done, reason, caps)."""
    caps = []
    m = SimpleNamespace(params=MigrationCfg(**(params or {})), dom={"max_pages": p2m}, start_ns=0, set_cap=caps.append, carry_final=False)
    pol = policy_cls(m)
    cleans = 0
    t = 0
    x = 1
    while True:
        dur = (durations or {}).get(x, 1_000_000_000)
        rnd = RoundStats(x, True, t, end_ns=t + dur)
        rnd.pages_sent = (sent or {}).get(x, 1000)
        rnd.pages_skipped = (skipped or {}).get(x, 0)
        rnd.bytes_sent = rnd.pages_sent * 4104
        t += dur

        def clean():
            nonlocal cleans
            cleans += 1
            return dirty[cleans - 1]

        decision, reason = pol.after_round(rnd, clean)
        if decision == "final":
            return x, cleans, reason, caps
        x += 1
        assert x < 100


def test_xen_stops_after_five_live_rounds_without_a_clean():
    rounds, cleans, reason, _ = drive(XenPolicy, [1000, 900, 800, 700, 600])
    assert rounds == 5 and cleans == 4 and "5 live rounds" in reason  # the final round sends D_5


def test_xen_sends_a_small_dirty_set_live_once_more():
    rounds, cleans, reason, _ = drive(XenPolicy, [1000, 30])
    # D_2 = 30 < 50 is still sent live as round 3, then the paused round sends what it dirtied
    assert rounds == 3 and cleans == 2 and "30 < 50" in reason


def test_xen_idle_guest_one_live_round():
    rounds, cleans, _, _ = drive(XenPolicy, [0])
    assert rounds == 1 and cleans == 1


def test_xen_legacy_rules():
    assert drive(XenLegacyPolicy, [5000] * 40)[0] == 29  # iterations
    r = drive(XenLegacyPolicy, [5000] * 40, sent={1: 1000, 2: 40}, skipped={2: 5})
    assert r[0] == 2 and "sent + skipped < 50" in r[2]
    r = drive(XenLegacyPolicy, [5000] * 40, sent={i: 30 for i in range(1, 40)}, skipped={i: 25 for i in range(1, 40)})
    assert r[0] == 29  # 30 + 25 >= 50 every time
    r = drive(XenLegacyPolicy, [99_999] * 40, sent={1: 100_000, 2: 90_000, 3: 90_000, 4: 90_000}, p2m=100_000)
    # 280,000 after iteration 3 is not above 3 x 100,000; 370,000 after iteration 4 is
    assert r[0] == 4 and "3 x guest memory" in r[2]
    # the CLEAN after the deciding iteration happens after the suspend: one fewer CLEAN than rounds
    assert r[1] == 3


def test_xen_legacy_rate_limiting():
    # 1 s rounds; dirty rate in (decimal) Mbit/s = pages * 4096 * 8 / 1e6
    pages_for = lambda mbit: int(mbit * 1e6 / 8 / 4096) + 1  # noqa: E731
    dirty = [pages_for(120), pages_for(300), pages_for(700), pages_for(700)]
    sent = {1: 50_000, 2: 40_000, 3: 45_000, 4: 50_000}
    rounds, cleans, reason, caps = drive(XenLegacyPolicy, dirty, sent=sent, params={"rate_limit": True})
    mb = 1 << 20
    # start 100; 120 > 100 -> 170; 300 > 170 -> 350; 700 -> min(750, 500) = 500
    assert [int(c // mb) for c in caps] == [170, 350, 500]
    assert rounds == 4 and "maximum rate" in reason  # 50,000 > 45,000 sent at the cap


def test_downtime_target():
    params = {"max_downtime_ms": 300, "max_rounds": 30}
    # round bandwidth: 1000 pages * 4104 B per 1 s, so 300 ms hold 300 pages of 4104 B
    rounds, cleans, reason, _ = drive(DowntimeTargetPolicy, [5000, 1000, 301, 299, 10], params=params)
    assert rounds == 4 and cleans == 4 and "fit in 300 ms" in reason
    assert drive(DowntimeTargetPolicy, [5000] * 40, params={"max_downtime_ms": 300, "max_rounds": 7})[0] == 7


# --- timing ----------------------------------------------------------------------------------------


def test_idle_guest_1gib_over_1gbit_takes_8_59_s_and_sends_each_page_once():
    s = simulate(two_hosts([idle("guest", 1024)], [migrate("guest")], 11000)).summary
    m = mig(s)
    assert m["status"] == "completed"
    expected_ms = GIB * 8 / ONE_GBIT * 1000  # 8589.93 ms of page data
    assert abs(m["total_ms"] - expected_ms) / expected_ms <= 0.01
    assert m["pages_sent"] == GIB // 4096
    assert m["rounds"] == 1 and m["per_round"][-1]["pages_sent"] == 0  # empty final round
    assert m["downtime_ms"] < 1.0  # only the final records and the link latency
    assert m["memory_match"] and m["vcpu_match"]
    guest = next(d for d in s["domains"] if d["name"] == "guest")
    assert guest["host"] == "host1" and guest["frames"] == GIB // 4096


def test_idle_migration_time_is_linear_in_memory():
    t = {}
    for mib in (128, 256, 512):
        t[mib] = mig(simulate(two_hosts([idle("g", mib)], [migrate("g")], 6000)).summary)["total_ms"]
    assert t[256] / t[128] == pytest.approx(2.0, rel=0.01)
    assert t[512] / t[256] == pytest.approx(2.0, rel=0.01)


def test_two_migrations_sharing_a_link_each_take_twice_as_long():
    alone = mig(simulate(two_hosts([idle("a", 256)], [migrate("a")], 6000)).summary)["total_ms"]
    s = simulate(two_hosts([idle("a", 256), idle("b", 256)], [migrate("a"), migrate("b")], 8000)).summary
    for name in ("a", "b"):
        assert mig(s, name)["total_ms"] / alone == pytest.approx(2.0, rel=0.02)


def test_nic_is_a_shared_bottleneck_too():
    doc = two_hosts([idle("a", 128), idle("b", 128)], [migrate("a"), migrate("b")], 6000,
                    links=[{"a": "host0", "b": "host1", "bandwidth_mbit_s": 10000, "latency_us": 100}])
    doc["hosts"][0]["nic_mbit_s"] = 1000
    s = simulate(doc).summary
    one = 128 * (1 << 20) * 8 / 1e9 * 1000  # one guest at the whole NIC
    assert mig(s, "a")["total_ms"] / one == pytest.approx(2.0, rel=0.03)


# --- the hammer guest under each policy ------------------------------------------------------------


def hammer(policy, **kw):
    dom = {"name": "guest", "host": "host0", "mem_mib": 256, "workload": {"kind": "memwrite", "dirty_mb_s": 60, "working_set_mib": 128}}
    return two_hosts([dom], [migrate("guest", policy=policy, **kw)], 25000, links=[{"a": "host0", "b": "host1", "bandwidth_mbit_s": 500, "latency_us": 100}])


@pytest.mark.parametrize("policy", ["xen", "xen-legacy", "downtime-target"])
def test_hammer_guest_migrates_with_nothing_lost(policy):
    m = mig(simulate(hammer(policy)).summary)
    assert m["status"] == "completed"
    assert m["memory_match"] and m["vcpu_match"]
    assert m["guest_slowdown_pct"] > 0  # log-dirty faults were charged to the guest
    live = [r for r in m["per_round"] if r["live"]]
    if policy == "xen":
        assert m["rounds"] <= 5
    if policy == "downtime-target":
        assert m["downtime_ms"] <= 300 + 5
    assert live[0]["pages_sent"] == 256 * 256


def test_destination_memory_equals_source_at_pause_page_for_page():
    """Stop just after the restore (resume delayed): both copies frozen, compared page by page."""
    doc = hammer("xen", resume_us=200_000)
    doc["domains"][0]["vcpus"] = 2
    k = Kept(doc)
    try:
        mgr = k.mgr
        t = 1_000_000_000
        m = None
        while t < 25_000_000_000:
            t += 5_000_000
            mgr.run_until(t)
            m = mgr.migrations[0] if mgr.migrations else None
            if m is not None and m.state == "unpause":
                break
        assert m is not None and m.state == "unpause", "never saw the migration between restore and resume"
        uid = m.uid
        src, dst = k.hosts["host0"], k.hosts["host1"]
        sd, dd = src.engine.domains[uid], dst.engine.domains[uid]
        assert np.array_equal(src.memory.p2m[sd.p2m_off : sd.p2m_off + sd.max_pages] >= 0, dst.memory.p2m[dd.p2m_off : dd.p2m_off + dd.max_pages] >= 0)
        assert np.array_equal(src.memory.snapshot(sd), dst.memory.snapshot(dd))
        # every vCPU context on the destination is the record saved at pause
        from hosts.codec import pack_vcpu, unpack_vcpu

        saved = {unpack_vcpu(r).vid: r for r in m.records}
        for i in range(sd.nr_vcpus):
            vid = make_vid(uid, i)
            v = next(c.vcpus[vid] for c in dst.cores.values() if vid in c.vcpus)
            assert pack_vcpu(v, with_sched=False) == pack_vcpu(unpack_vcpu(saved[vid]), with_sched=False)
            assert v.pause_count == 1  # still paused until the resume
    finally:
        k.close()


def test_vcpu_inside_a_long_hypercall_finishes_it_on_the_destination():
    pages = 60_000
    bal = {"name": "guest", "host": "host0", "mem_mib": 256, "hard_affinity": [0],
           "workload": {"kind": "balloon", "op": "decrease", "first_pfn": 1000, "pages": pages, "at_ms": 500}}
    hog = {"name": "hog", "host": "host0", "mem_mib": 16, "hard_affinity": [0], "workload": {"kind": "cpu"}}
    doc = two_hosts([bal, hog], [migrate("guest")], 6000)
    doc["hosts"][0]["hypercall_costs"] = {"memop_extent_ns": 20_000}  # 1.2 s of CPU for the call
    doc["hosts"][1]["hypercall_costs"] = {"memop_extent_ns": 20_000}
    res = simulate(doc)
    s = res.summary
    m = mig(s)
    assert m["status"] == "completed" and m["memory_match"] and m["vcpu_match"]
    assert m["continuations"] == 1  # the record carried a preempted memory_op
    vid = make_vid(next(d["uid"] for d in s["domains"] if d["name"] == "guest"), 0)
    info = next(r.vcpus[vid] for r in res.reports["host1"] if vid in r.vcpus)
    assert info.wl["result"] == pages and info.wl["done_ns"] > m["resume_ns"]
    guest = next(d for d in s["domains"] if d["name"] == "guest")
    assert guest["host"] == "host1" and guest["frames"] == 256 * 256 - pages


# --- faults -----------------------------------------------------------------------------------------


def dry_run_times(doc):
    m = mig(simulate(doc).summary)
    return m


@pytest.fixture(scope="module")
def hammer_rounds():
    return dry_run_times(hammer("xen"))["per_round"]


@pytest.mark.parametrize("fault", ["cut_link", "fail_host"])
@pytest.mark.parametrize("phase", ["first pass", "later round", "stop-and-copy"])
def test_abort_at_each_phase_leaves_the_domain_on_the_source(phase, fault, hammer_rounds):
    rounds = hammer_rounds
    if phase == "first pass":
        at = (rounds[0]["start_ns"] + rounds[0]["end_ns"]) // 2
    elif phase == "later round":
        at = (rounds[2]["start_ns"] + rounds[2]["end_ns"]) // 2
    else:
        last = rounds[-1]
        assert not last["live"]
        at = (last["start_ns"] + max(last["end_ns"], last["start_ns"] + 1)) // 2
    ev = {"cut_link": {"a": "host0", "b": "host1"}} if fault == "cut_link" else {"fail_host": {"host": "host1"}}
    doc = hammer("xen")
    doc["events"].append({"at_ms": at / 1e6, **ev})
    res = simulate(doc)
    s = res.summary
    m = mig(s)
    assert m["status"] == "aborted", m
    guest = next(d for d in s["domains"] if d["name"] == "guest")
    assert guest["host"] == "host0"
    assert guest["frames"] == 256 * 256  # nothing lost on the source
    # the guest kept running (or ran again) on the source after the abort
    vid = make_vid(guest["uid"], 0)
    after = 0
    for r in res.reports["host0"]:
        tr = np.frombuffer(r.trace, dtype=np.int64).reshape(-1, 3)
        after += sum(e - max(b, at) for b, e, v in tr.tolist() if v == vid and e > at)
    assert after > 0.5 * (s["sim_time_ns"] - at)
    hosts = s["hosts"]
    total = 2048 * 256
    dom0 = 256 * 256
    assert hosts["host0"]["free_frames"] == total - dom0 - 256 * 256
    if fault == "cut_link":
        assert hosts["host1"]["free_frames"] == total - dom0  # the reservation was released
    else:
        assert hosts["host1"]["failed_at_ns"] == at  # (a crashed host's memory is gone anyway)


def test_migration_to_a_host_without_room_is_refused_before_it_starts():
    doc = two_hosts([idle("big", 1536)], [migrate("big")], 2000)
    doc["hosts"][1]["mem_mib"] = 1024
    s = simulate(doc).summary
    m = mig(s)
    assert m["status"] == "refused" and "needs" in m["reason"]
    assert m["bytes_sent"] == 0
    big = next(d for d in s["domains"] if d["name"] == "big")
    assert big["host"] == "host0" and big["frames"] == 1536 * 256


def test_a_batch_is_read_in_the_exchange_that_brings_the_source_to_its_instant():
    """Every PAGE_DATA batch but a round's first leaves when the previous one has left the wire,
    an instant known one step ahead: the source reads it in the same exchange as its run there
    (RunThen). A round's first batch follows a CLEAN (or the DOMAIN record) at once and is read
    alone. The counts come from the rounds' pages: ceil(pages / 1024) batches per round."""
    from hosts import hostops

    k = Kept(hammer("xen"))
    seen: list[tuple[str, str]] = []
    for h in k.mgr.hosts.values():
        def send(req, _orig=h.t.send, _name=h.name):
            if type(req) is hostops.RunThen:
                seen.append((_name, "RunThen+" + type(req.then).__name__))
            elif type(req) is hostops.ReadPageData:
                seen.append((_name, "ReadPageData"))
            return _orig(req)
        h.t.send = send
    try:
        k.mgr.run_until(k.plan.duration_ns)
        m = k.mgr.migrations[0].out
    finally:
        k.close()
    assert m.status == "completed" and m.memory_match
    batches = [-(-r["pages_sent"] // 1024) for r in m.per_round]
    rounds_with_pages = sum(1 for b in batches if b)
    assert len(batches) >= 3 and sum(batches) > 3 * rounds_with_pages
    assert seen.count(("host0", "ReadPageData")) == rounds_with_pages
    assert seen.count(("host0", "RunThen+ReadPageData")) == sum(batches) - rounds_with_pages
    assert not [x for x in seen if x[0] == "host1"]  # the destination is never read


def test_run_then_refuses_a_run_as_its_follow_up():
    from hosts import hostops
    from hosts.messages import UnknownMessage
    from hosts.wire import packb, unpackb

    req = hostops.RunThen(5_000_000, hostops.ReadPageData(3, b""))
    assert unpackb(packb(req)) == req  # the nested request survives the wire with its type
    k = Kept(hammer("xen"))
    try:
        engine = k.hosts["host0"].engine
        with pytest.raises(UnknownMessage, match="RunThen takes a request"):
            hostops.serve(engine, hostops.RunThen(5_000_000, hostops.RunUntil(6_000_000)))
        assert engine.now == 0  # refused before running
    finally:
        k.close()


@pytest.mark.ray
def test_same_migration_same_figures_inline_and_ray(ray_session):
    a = simulate(hammer("xen")).summary
    b = simulate(hammer("xen"), backend="ray").summary
    assert a["trace_digest"] == b["trace_digest"]
    ma, mb = mig(a), mig(b)
    for k in ("status", "total_ms", "downtime_ms", "rounds", "pages_sent", "bytes_sent", "memory_match", "vcpu_match"):
        assert ma[k] == mb[k], k
    assert [r["pages_sent"] for r in ma["per_round"]] == [r["pages_sent"] for r in mb["per_round"]]


def bystander_doc():
    """The hammer migration (host0 -> host1) beside a third host running its own I/O guest."""
    doc = hammer("xen")
    doc["hosts"].append({"name": "host2", "pcpus": 2, "mem_mib": 2048})
    doc["domains"].append({"name": "bystander", "host": "host2", "mem_mib": 64, "workload": {"kind": "io", "think_ms": 3, "burst_us": 300}})
    return doc


def run_counting_runs(doc, every_step: bool):
    """Run inline in one go; (runs asked of each host, pCPU reports, the migration's outcome).
    ``every_step``: the manager stops every host at every step, as it did before it left the
    hosts a step does not concern behind."""
    from collections import Counter

    from hosts import hostops

    k = Kept(doc)
    if every_step:
        k.mgr.due_hosts = lambda t_ns: None
    runs: Counter[str] = Counter()
    for h in k.mgr.clients.values():
        def send(req, _orig=h.t.send, _name=h.name):
            if type(req) in (hostops.RunUntil, hostops.RunThen):
                runs[_name] += 1
            return _orig(req)
        h.t.send = send
    try:
        k.mgr.run_until(k.plan.duration_ns)
        reports = k.be.reports(k.mgr.finish(), set())
        out = k.mgr.migrations[0].out
    finally:
        k.close()
    flat = sorted((r.host, r.pcpu, r.digest, r.busy_ns, r.events) for rs in reports.values() for r in rs)
    return runs, flat, out


def test_a_host_no_migration_step_concerns_is_not_stopped_at_its_batches():
    """A PAGE_DATA step concerns the migration's source and destination only. The third host
    is asked to run twice: to the migrate event's instant (an event may concern any host) and
    to the end; its results, and everyone's, are those of a run stopping every host at every
    step (hosts stopped and resumed behave as if they had not stopped)."""
    lazy_runs, lazy, m_lazy = run_counting_runs(bystander_doc(), every_step=False)
    all_runs, every, m_all = run_counting_runs(bystander_doc(), every_step=True)
    batches = sum(-(-r["pages_sent"] // 1024) for r in m_lazy.per_round)
    assert m_lazy.status == "completed" and m_lazy.memory_match and m_lazy.vcpu_match
    assert lazy_runs["host2"] == 2
    assert lazy_runs["host0"] >= batches and lazy_runs["host1"] >= batches
    assert all_runs["host2"] == all_runs["host0"] >= batches  # before: every host, every step
    assert lazy == every
    for f in ("total_ms", "downtime_ms", "rounds", "pages_sent", "bytes_sent", "per_round"):
        assert getattr(m_lazy, f) == getattr(m_all, f), f


def test_a_host_left_behind_is_brought_to_the_managers_instant_before_it_is_asked():
    k = Kept(bystander_doc())
    try:
        t = 7_000_000
        k.mgr.run_hosts(t, {"host0", "host1"})
        k.mgr.now = t
        assert k.hosts["host2"].engine.now == 0 and k.hosts["host0"].engine.now == t
        k.mgr.hosts["host2"]  # what every toolstack read goes through
        assert k.hosts["host2"].engine.now == t
        assert k.mgr.host_now == {"host0": t, "host1": t, "host2": t}
    finally:
        k.close()


@pytest.mark.ray
def test_a_host_left_behind_gives_the_same_figures_on_ray(ray_session):
    """The bystander run on Ray (its host stopped only when a step concerns it, through the
    manager actor) gives inline's digest and migration figures."""
    a = simulate(bystander_doc()).summary
    b = simulate(bystander_doc(), backend="ray").summary
    assert a["trace_digest"] == b["trace_digest"]
    for k in ("status", "total_ms", "downtime_ms", "rounds", "pages_sent", "memory_match", "vcpu_match"):
        assert mig(a)[k] == mig(b)[k], k
